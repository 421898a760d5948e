"""The CA service's TLS front: terminates TLS for callers and hands the plaintext gRPC
stream to the in-process gRPC server on a loopback port, remembering which caller
certificate each hand-over connection carries.

Why not grpcio's own TLS: it either requires and verifies a client certificate in the
handshake (a missing, expired or foreign node credential ends as "Socket closed" on
the client, and the service never learns why) or asks for none (no mutual TLS). Here
the certificate is asked for but optional, so a caller without one still reaches the
handler (``no_credential``, or a bearer token); a chain OpenSSL refuses is refused in
the handshake with its alert *and* audited and counted with a named reason
(``credential_expired``, ``credential_untrusted``). Bounded: at most ``max_conns``
connections, each with a handshake deadline and an idle limit. Decides nothing about
certificates beyond OpenSSL's chain check; ``decide`` does the rest.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading

logger = logging.getLogger("hostmesh.casvc.front")
HANDSHAKE_TIMEOUT_S = 10.0  # a caller that does not finish its handshake holds nothing longer
IDLE_TIMEOUT_S = 300.0  # gRPC pings keep a live channel busier than this
BUFFER = 64 * 1024  # per direction; a CA call is a few KiB
# OpenSSL verify codes (x509_vfy.h) -> the decision's names
_EXPIRED = {9, 10}  # CERT_NOT_YET_VALID, CERT_HAS_EXPIRED


def server_context(cert_pem: bytes, key_pem: bytes, client_roots_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])  # gRPC
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cadata=client_roots_pem.decode())
    from agent.identity.tls import load_chain

    load_chain(ctx, cert_pem, key_pem)
    return ctx


def verify_reason(err: ssl.SSLCertVerificationError) -> str:
    return "credential_expired" if err.verify_code in _EXPIRED else "credential_untrusted"


class TlsFront:
    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, upstream_port: int, on_refused,
                 max_conns: int) -> None:
        self.ctx = ctx  # swapped on reload; new handshakes use the new one
        self.upstream_port = upstream_port
        self.on_refused = on_refused  # (reason, message, peer) for a certificate OpenSSL refused
        self._slots = threading.BoundedSemaphore(max_conns)
        self._peers: dict[int, bytes | None] = {}  # hand-over local port -> caller leaf (DER)
        self._lock = threading.Lock()
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family, backlog=128)
        self.port = self.sock.getsockname()[1]
        self.counters: dict[str, int] = {}
        self._closed = False

    def peer_certificate(self, grpc_peer: str) -> tuple[bool, bytes | None]:
        """For the gRPC handler: (came through this front, the caller's leaf or None)."""
        host, _, port = grpc_peer.rpartition(":")
        if not host.startswith("ipv4:127.0.0.1") or not port.isdigit():
            return False, None
        with self._lock:
            if int(port) not in self._peers:
                return False, None
            return True, self._peers[int(port)]

    def start(self) -> None:
        threading.Thread(target=self._accept, daemon=True, name="ca-tls-accept").start()

    def close(self) -> None:
        self._closed = True
        self.sock.close()

    def _count(self, name: str) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + 1

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                if self._closed:
                    return
                continue
            if not self._slots.acquire(blocking=False):
                self._count("connections_over_limit")
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn, addr), daemon=True, name="ca-tls-conn").start()

    def _serve(self, conn: socket.socket, addr) -> None:
        peer = f"{addr[0]}:{addr[1]}"
        up, local = None, None
        try:
            conn.settimeout(HANDSHAKE_TIMEOUT_S)
            try:
                tls = self.ctx.wrap_socket(conn, server_side=True)
            except ssl.SSLCertVerificationError as e:
                self.on_refused(verify_reason(e), f"node credential refused in the handshake: {e.verify_message}",
                                peer)
                return
            except (ssl.SSLError, OSError):
                self._count("handshake_failures")
                return
            leaf = tls.getpeercert(binary_form=True)
            up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            up.bind(("127.0.0.1", 0))
            local = up.getsockname()[1]
            with self._lock:
                self._peers[local] = leaf
            up.connect(("127.0.0.1", self.upstream_port))
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _pump(tls, up)
        except OSError:
            pass
        finally:
            if up is not None:
                with self._lock:
                    self._peers.pop(local, None)
                up.close()
            conn.close()
            self._slots.release()


def _pump(tls: ssl.SSLSocket, up: socket.socket) -> None:
    """Bytes both ways until either side ends or the connection idles out."""
    tls.setblocking(False)
    up.setblocking(False)
    to_up, to_tls = bytearray(), bytearray()
    while True:
        if tls.pending():
            r, w = [tls], [up] if to_up else []
        else:
            rl = ([tls] if len(to_up) < BUFFER else []) + ([up] if len(to_tls) < BUFFER else [])
            wl = ([up] if to_up else []) + ([tls] if to_tls else [])
            r, w, _ = select.select(rl, wl, [], IDLE_TIMEOUT_S)
            if not r and not w:
                return
        if tls in r:
            try:
                data = tls.recv(BUFFER)
                if not data:
                    return
                to_up += data
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
        if up in r:
            data = up.recv(BUFFER)
            if not data:
                return
            to_tls += data
        if to_up:
            try:
                del to_up[:up.send(to_up)]
            except BlockingIOError:
                pass
        if to_tls:
            try:
                del to_tls[:tls.send(to_tls)]
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                pass
