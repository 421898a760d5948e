"""An HBONE peer built on Python's ``h2`` (not the core's HTTP/2), playing ztunnel in
the lab: ``client`` opens ONE TLS connection (TLS 1.3, ALPN h2, no SNI) and runs
CONNECT streams on it; ``server`` answers CONNECT streams on :15008 the way ztunnel
does (200 only after the app connected, 503 if it did not) and logs what each stream
carried; ``app`` is the test application behind them. Run as
``python -m tests.lab.hbone_peer <role> '<json>'`` inside a lab namespace.

The app's two modes prove both half-closes: ``a N`` reads to EOF (the client's
END_STREAM became a FIN) then answers ``<len> <sha256>`` and closes (its FIN becomes
END_STREAM); ``b N SEED`` sends N bytes and shuts its write side down first, then reads
to EOF and logs what it received (the client sends only after that END_STREAM)."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import random
import select
import socket
import ssl
import sys
import tempfile
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
from cryptography import x509

MIB = 1024 * 1024


def pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def mint(labdir: str, node: str, spiffe_id: str) -> tuple[str, str]:
    """An SVID for ``spiffe_id`` signed by ``node``'s intermediate of the lab CA: (chain, key) files."""
    from agent.identity import ca

    inter = f"{labdir}/ca/nodes/{node}/"
    icert = ca.load_certs(open(inter + "cert.pem", "rb").read())[0]
    ikey = ca.load_key(open(inter + "key.pem", "rb").read())
    leaf, key = ca.make_svid(spiffe_id, icert, ikey, dt.datetime.now(dt.UTC))
    d = tempfile.mkdtemp()
    open(d + "/c.pem", "wb").write(ca.cert_pem(leaf, icert))
    open(d + "/k.pem", "wb").write(ca.key_pem(key))
    return d + "/c.pem", d + "/k.pem"


@contextlib.contextmanager
def server_lab(name: str, topology: str, tmp, identity: str):
    """A lab where a peer plays node-1's pods (``--capture-fail open``, node-1's agent stopped):
    the lab, with ``chain``/``key`` (an SVID for ``identity`` from node-1's intermediate) and
    an empty ``peer_log`` set on it."""
    from tests.lab.conftest import hm, lab_up

    with lab_up(name, "--capture-fail", "open", topology=topology, tmp=tmp) as lab:
        hm("lab", "agent", "--name", lab.name, "node-1", "stop", check=True)
        labdir = f"/run/hostmesh/lab/{lab.name}"
        lab.chain, lab.key = mint(labdir, "node-1", identity)
        lab.peer_log = f"{labdir}/peer.log"
        open(lab.peer_log, "w").close()
        yield lab


def uri_of(der: bytes | None) -> str | None:
    if not der:
        return None
    san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return ",".join(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def context(server: bool, chain: str, key: str, bundle: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(bundle)
    ctx.load_cert_chain(chain, key)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def ztunnel_settings(conn: h2.connection.H2Connection, server: bool, max_streams: int | None = None) -> None:
    """ztunnel's HTTP/2 settings (NOTES.md): 4 MiB stream / 16 MiB connection window, 1 MiB frames;
    ``max_streams`` overrides ztunnel's stream limit (200 server, 100 client)."""
    S = h2.settings.SettingCodes
    conn.initiate_connection()
    # sent as an update: h2 applies them (its inbound frame limit too) when the peer acknowledges
    conn.update_settings({S.INITIAL_WINDOW_SIZE: 4 * MIB, S.MAX_FRAME_SIZE: MIB,
                          S.MAX_CONCURRENT_STREAMS: max_streams or (200 if server else 100),
                          S.MAX_HEADER_LIST_SIZE: (64 if server else 16) * 1024})
    conn.increment_flow_control_window(16 * MIB - 65535)


class Sender:
    """Bytes owed per stream, sent as the peer's flow-control windows allow."""

    def __init__(self, conn: h2.connection.H2Connection) -> None:
        self.conn, self.out, self.end = conn, {}, set()

    def queue(self, sid: int, data: bytes = b"", end: bool = False) -> None:
        self.out.setdefault(sid, bytearray()).extend(data)
        if end:
            self.end.add(sid)

    def pump(self) -> None:
        for sid in list(self.out):
            buf = self.out[sid]
            while buf:
                n = min(len(buf), self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
                if n <= 0:
                    break
                self.conn.send_data(sid, bytes(buf[:n]))
                del buf[:n]
            if not buf:
                del self.out[sid]
                if sid in self.end:
                    self.end.discard(sid)
                    self.conn.end_stream(sid)

    def drop(self, sid: int) -> None:
        self.out.pop(sid, None)
        self.end.discard(sid)


# ---- client ----------------------------------------------------------------------------
def client(p: dict) -> dict:
    """p: connect [ip, port], chain, key, bundle, streams [{authority, mode, n, seed, then, headers}]."""
    tls = context(False, p["chain"], p["key"], p["bundle"]).wrap_socket(
        socket.create_connection(tuple(p["connect"]), 10), server_hostname=None)
    tls.settimeout(p.get("timeout", 20))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    ztunnel_settings(conn, server=False)
    send = Sender(conn)
    res, by_sid = [], {}
    for i, s in enumerate(p["streams"]):
        sid = conn.get_next_available_stream_id()
        hdrs = [(":method", "CONNECT"), (":authority", s["authority"])] + [tuple(h) for h in s.get("headers", [])]
        conn.send_headers(sid, hdrs)
        r = {"i": i, "sid": sid, "status": None, "headers": {}, "data": bytearray(), "ended": False, "reset": None}
        res.append(r)
        by_sid[sid] = (s, r)
    tls.sendall(conn.data_to_send())

    def done(r) -> bool:
        return r["reset"] is not None or (r["ended"] and r["status"] is not None)

    deadline = time.monotonic() + p.get("timeout", 20)
    while not all(done(r) for r in res) and time.monotonic() < deadline:
        data = tls.recv(MIB)
        if not data:
            break
        for ev in conn.receive_data(data):
            sid = getattr(ev, "stream_id", None)
            if sid not in by_sid:
                continue
            s, r = by_sid[sid]
            if isinstance(ev, h2.events.ResponseReceived):
                r["headers"] = dict(ev.headers)
                r["status"] = int(r["headers"][":status"])
                if r["status"] == 200:  # ztunnel sends only after the 200
                    first = f"{s['mode']} {s['n']} {s.get('seed', 0)}\n".encode()
                    if s["mode"] == "a":
                        send.queue(sid, first + pattern(s["n"], s.get("seed", 0)), end=True)
                    else:
                        send.queue(sid, first)
            elif isinstance(ev, h2.events.DataReceived):
                r["data"] += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.StreamEnded):
                r["ended"] = True
                if r["status"] == 200 and s["mode"] == "b":  # the app half-closed; now we send
                    send.queue(sid, pattern(s["then"], s.get("seed", 0) + 1), end=True)
                elif r["status"] != 200:
                    send.drop(sid)
            elif isinstance(ev, h2.events.StreamReset):
                r["reset"] = int(ev.error_code)
                send.drop(sid)
        send.pump()
        tls.sendall(conn.data_to_send())
    # let the last END_STREAMs reach the peer before the connection closes
    send.pump()
    tls.sendall(conn.data_to_send())
    time.sleep(0.3)
    out = {"peer_uri": uri_of(tls.getpeercert(binary_form=True)), "alpn": tls.selected_alpn_protocol(),
           "version": tls.version(), "streams": []}
    for r in res:
        d = bytes(r.pop("data"))
        r.update(received_len=len(d), received_sha=sha(d), received_head=d[:200].decode("latin-1"))
        out["streams"].append(r)
    tls.close()
    return out


# ---- server ----------------------------------------------------------------------------
def server(p: dict) -> None:
    """p: port, chain, key, bundle, log (JSON lines: one per stream, one per connection); optional
    max_streams (the limit advertised, ztunnel's 200 by default) and echo (streams answered 200 and
    echoed by the peer itself, no app connection: 1,000 streams hold no socket here)."""
    ctx = context(True, p["chain"], p["key"], p["bundle"])
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", p["port"]))
    ls.listen(128)
    log = open(p["log"], "a", buffering=1)
    lock = threading.Lock()

    def write(rec: dict) -> None:
        with lock:
            log.write(json.dumps(rec) + "\n")

    n = 0
    while True:
        sock, peer = ls.accept()
        n += 1
        threading.Thread(target=_serve_conn, args=(ctx, sock, peer, n, write, p), daemon=True).start()


def _serve_conn(ctx, sock, peer, index: int, write, p: dict) -> None:
    try:
        tls = ctx.wrap_socket(sock, server_side=True)
    except (ssl.SSLError, OSError) as e:
        write({"conn": index, "peer": list(peer), "handshake_error": str(e)})
        return
    write({"conn": index, "peer": list(peer), "alpn": tls.selected_alpn_protocol(),
           "client_uri": uri_of(tls.getpeercert(binary_form=True))})
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    ztunnel_settings(conn, server=True, max_streams=p.get("max_streams"))
    send = Sender(conn)
    ups: dict[int, socket.socket] = {}
    by_fd: dict[int, int] = {}
    tls.sendall(conn.data_to_send())
    try:
        while True:
            rl = [tls] + [ups[sid] for sid in by_fd.values()]  # the apps not yet at EOF
            ready = [tls] if tls.pending() else select.select(rl, [], [], 30)[0]
            if not ready:
                break
            for r in ready:
                if r is tls:
                    data = tls.recv(MIB)
                    if not data:
                        return
                    for ev in conn.receive_data(data):
                        _on_event(conn, send, ev, ups, by_fd, index, peer, write, p.get("echo", False))
                else:
                    sid = by_fd[r.fileno()]
                    chunk = r.recv(MIB)
                    if chunk:
                        send.queue(sid, chunk)
                    else:  # the app's FIN: END_STREAM (its socket stays open for the other way)
                        send.queue(sid, end=True)
                        del by_fd[r.fileno()]
            send.pump()
            tls.sendall(conn.data_to_send())
    except (OSError, ssl.SSLError) as e:
        write({"conn": index, "error": str(e)})
    finally:
        for up in ups.values():
            up.close()
        tls.close()


def _on_event(conn, send, ev, ups, by_fd, index, peer, write, echo: bool) -> None:
    sid = getattr(ev, "stream_id", None)
    if isinstance(ev, h2.events.RequestReceived):
        h = dict(ev.headers)
        write({"conn": index, "peer": list(peer), "stream": sid, "method": h.get(":method"),
               "authority": h.get(":authority"), "forwarded": h.get("forwarded"), "baggage": h.get("baggage"),
               "traceparent": h.get("traceparent")})
        if echo:
            conn.send_headers(sid, [(":status", "200")])
            return
        host, _, port = h.get(":authority", "").rpartition(":")
        try:
            up = socket.create_connection((host.strip("[]"), int(port)), 5)
        except (OSError, ValueError):
            conn.send_headers(sid, [(":status", "503")], end_stream=True)
            return
        ups[sid] = up
        by_fd[up.fileno()] = sid
        conn.send_headers(sid, [(":status", "200")])
    elif isinstance(ev, h2.events.DataReceived):
        conn.acknowledge_received_data(ev.flow_controlled_length, sid)
        if echo:
            send.queue(sid, ev.data)
        elif sid in ups:
            ups[sid].sendall(ev.data)
    elif isinstance(ev, h2.events.StreamEnded):
        if echo:
            send.queue(sid, end=True)
        elif sid in ups:
            ups[sid].shutdown(socket.SHUT_WR)
    elif isinstance(ev, h2.events.StreamReset):
        up = ups.pop(sid, None)
        send.drop(sid)
        if up is not None:
            by_fd.pop(up.fileno(), None)
            up.close()


# ---- app -------------------------------------------------------------------------------
def app(p: dict) -> None:
    """p: port, log. Modes ``a N`` and ``b N SEED`` (module docstring)."""
    ls = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    ls.bind(("::", p["port"]))
    ls.listen(128)
    log = open(p["log"], "a", buffering=1)
    lock = threading.Lock()

    def one(s: socket.socket, peer) -> None:
        f = s.makefile("rb")
        mode, n, seed = (f.readline().decode().split() + ["-", "0", "0"])[:3]
        if mode not in ("a", "b"):
            s.close()
            return
        if mode == "a":
            got = f.read()
            s.sendall(f"{len(got)} {sha(got)}\n".encode())
        else:
            s.sendall(pattern(int(n), int(seed)))
            s.shutdown(socket.SHUT_WR)
            got = f.read()
            with lock:
                log.write(json.dumps({"seed": int(seed), "peer": peer[0], "got_len": len(got), "got_sha": sha(got)})
                          + "\n")
        s.close()

    while True:
        s, peer = ls.accept()
        threading.Thread(target=one, args=(s, peer), daemon=True).start()


if __name__ == "__main__":
    role, arg = sys.argv[1], json.loads(sys.argv[2])
    if role == "client":
        print(json.dumps(client(arg)))
    elif role == "mint":
        print(json.dumps(mint(*arg)))
    else:
        {"server": server, "app": app}[role](arg)
