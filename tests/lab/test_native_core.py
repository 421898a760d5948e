"""The native core driven directly over loopback, with Python's own TLS (OpenSSL) and
sockets as its peers: the CONNECT exchange and the SPIFFE checks of a real handshake,
one named reason per bad input, 200 only after the upstream exists, resets carried
across. No namespaces (the core's upstream sockets carry SO_MARK: root)."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import tempfile
import threading
import time

import pytest

from agent import dataplane
from agent.identity import testing
from agent.identity.validate import REASONS

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="SO_MARK on the core's sockets needs root")

SID = "spiffe://cluster.local/ns/shop/sa/web"
CLIENT = "spiffe://cluster.local/ns/front/sa/client"
SNI = "web.shop.hostmesh.internal"


@pytest.fixture(scope="module")
def pki():
    return testing.make_pki()


class Node:
    """A core with a tunnel listener on 127.0.0.1 and a thread answering its events
    with ``decide(event) -> (method, args)``."""

    def __init__(self, pki, decide, handshake_timeout_s: float = 2.0) -> None:
        self.core = dataplane.Core(handshake_timeout_s=handshake_timeout_s, connect_timeout_s=2.0)
        self.core.set_trust(pki.bundle_pem, "cluster.local")
        chain, key = pki.svid(SID)
        self.core.set_identity(SID, SNI, chain, key)
        self.ls = socket.create_server(("127.0.0.1", 0))
        self.port = self.ls.getsockname()[1]
        self.core.listen(self.ls.fileno(), "tunnel")
        self.events: list = []
        self._stop = False
        self._t = threading.Thread(target=self._loop, args=(decide,), daemon=True)
        self._t.start()

    def _loop(self, decide) -> None:
        import select

        fd = self.core.eventfd()
        while not self._stop:
            if not select.select([fd], [], [], 0.1)[0]:
                continue
            for ev in self.core.events():
                self.events.append(ev)
                if ev[0] in ("conn", "failed") and decide is not None:
                    out = decide(ev)
                    if out is not None:
                        getattr(self.core, out[0])(ev[1], *out[1])

    def stats(self) -> dict:
        return self.core.stats()

    def close(self) -> None:
        self._stop = True
        self._t.join()
        self.core.shutdown()
        self.ls.close()


def client_ctx(pki, chain_key=None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=pki.bundle_pem.decode())
    if chain_key is not None:
        with tempfile.TemporaryDirectory() as d:
            open(f"{d}/c", "wb").write(chain_key[0])
            open(f"{d}/k", "wb").write(chain_key[1])
            ctx.load_cert_chain(f"{d}/c", f"{d}/k")
    return ctx


BACK = bytes(range(256)) * 4096  # 1 MiB the upstream sends after the client's EOF


def sink_server(expect: int) -> tuple[socket.socket, int]:
    """Reads ``expect`` bytes, answers their sha256, then 1 MiB, then EOF."""
    ls = socket.create_server(("127.0.0.1", 0))

    def serve():
        import hashlib

        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            h, n = hashlib.sha256(), 0
            while n < expect and (d := c.recv(65536)):
                h.update(d)
                n += len(d)
            c.sendall(h.hexdigest().encode() + BACK)
            c.close()
    threading.Thread(target=serve, daemon=True).start()
    return ls, ls.getsockname()[1]


def tunnel(node, pki, head: bytes, chain_key=None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", node.port), 5)
    tls = client_ctx(pki, chain_key or pki.svid(CLIENT)).wrap_socket(raw, server_hostname=SNI)
    tls.sendall(head)
    return tls


def read_head(tls) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        d = tls.recv(4096)
        if not d:
            break
        data += d
    return data


def wait(pred, timeout=5.0):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def test_verify_gives_every_reason_of_the_python_rules(pki):
    now = dt.datetime.now(dt.UTC)
    assert dataplane.verify(pki.svid(SID)[0], pki.bundle_pem, "cluster.local", now) == dataplane.Verdict(True, SID)
    for reason, (chain, _key) in testing.bad_svids(pki, SID).items():
        want = reason if reason in REASONS else "untrusted"
        assert dataplane.verify(chain, pki.bundle_pem, "cluster.local", now).reason == want, reason
    v = dataplane.verify(pki.svid(SID)[0], pki.bundle_pem, "cluster.local", now, "spiffe://cluster.local/ns/x/sa/y",
                         role="server")
    assert v.reason == "unexpected_identity"


def test_connect_through_the_core_byte_exact_with_identity_and_leftover(pki):
    import hashlib

    payload = os.urandom(3 << 20)
    ls, port = sink_server(5 + len(payload))
    node = Node(pki, lambda ev: ("connect", ("127.0.0.1", port, None)))
    try:
        tls = tunnel(node, pki, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nhost: x\r\nforwarded: for=\"10.9.9.9:1234\"\r\n"
                     "\r\nfirst".encode())
        assert read_head(tls).startswith(b"HTTP/1.1 200 OK\r\n")
        tls.sendall(payload)  # the upstream answers, then closes: the client sees close_notify
        got = b""
        while True:
            d = tls.recv(1 << 20)
            if not d:
                break
            got += d
        assert got == hashlib.sha256(b"first" + payload).hexdigest().encode() + BACK
        ev = node.events[0]
        assert ev[0] == "conn" and ev[2] == "tunnel"
        identity, target, forwarded, _tp, protocol, baggage = ev[5]
        assert (identity, target, forwarded) == (CLIENT, ("127.0.0.1", port), ("10.9.9.9", 1234))
        assert (protocol, baggage) == ("connect", None)  # HTTP/1.1 CONNECT, no ALPN h2
        tls.close()
        assert wait(lambda: any(e[0] == "finished" for e in node.events))
        fin = next(e for e in node.events if e[0] == "finished")
        assert (fin[2], fin[3]) == (5 + len(payload), len(got))  # sent, received
    finally:
        node.close()
        ls.close()


def test_refusals_answer_their_status_and_name_the_policy(pki):
    node = Node(pki, lambda ev: ("refuse", ("denied", 403, "shop/deny-all")))
    try:
        tls = tunnel(node, pki, b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nhost: x\r\n\r\n")
        head = read_head(tls)
        assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n") and b"x-hostmesh-policy: shop/deny-all\r\n" in head
        for bad, status in ((b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", b"400"),
                            (b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nhost: x\r\nx: " + b"a" * (17 << 10) + b"\r\n\r\n",
                             b"431")):
            assert read_head(tunnel(node, pki, bad)).split(b" ")[1] == status
        assert node.stats()["tunnel_status_431"] == 1 and node.stats()["tunnel_status_400"] == 1
    finally:
        node.close()


def test_upstream_refused_is_502_after_the_decision(pki):
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    node = Node(pki, lambda ev: ("connect", ("127.0.0.1", port, None)) if ev[0] == "conn" else None)
    try:
        assert read_head(tunnel(node, pki, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nhost: x\r\n\r\n".encode())) \
            .startswith(b"HTTP/1.1 502 ")
        assert wait(lambda: any(e[0] == "failed" for e in node.events))
    finally:
        node.close()


def test_every_bad_client_is_refused_with_its_named_reason(pki):
    node = Node(pki, None, handshake_timeout_s=0.5)
    try:
        cases = {r: ck for r, ck in testing.bad_svids(pki, CLIENT).items() if r != "not_yet_valid"}
        for _reason, ck in cases.items():
            with pytest.raises((ssl.SSLError, OSError)):
                t = tunnel(node, pki, b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nhost: x\r\n\r\n", ck)
                if not t.recv(10):  # TLS 1.3: the client learns of the rejection on its first read
                    raise OSError("closed")
        # no certificate, plaintext, a handshake that never completes
        raw = socket.create_connection(("127.0.0.1", node.port), 5)
        with pytest.raises((ssl.SSLError, OSError)):
            t = client_ctx(pki).wrap_socket(raw, server_hostname=SNI)
            t.sendall(b"x")
            if not t.recv(10):
                raise OSError("closed")
        p = socket.create_connection(("127.0.0.1", node.port), 5)
        p.sendall(b"GET / HTTP/1.1\r\n\r\n")
        idle = socket.create_connection(("127.0.0.1", node.port), 5)
        want = {f"peer_rejected_{r if r in REASONS else 'untrusted'}" for r in cases}
        want |= {"peer_rejected_no_certificate", "peer_rejected_not_tls", "peer_rejected_handshake_timeout"}
        assert wait(lambda: want <= set(node.stats())), (want - set(node.stats()), node.stats())
        assert idle.recv(10) == b""  # the core let go of it
        assert node.stats()["connections"] == 0 and node.stats()["pending_decisions"] == 0
        p.close()
    finally:
        node.close()


def test_a_reset_upstream_resets_the_client(pki):
    ls = socket.create_server(("127.0.0.1", 0))
    port = ls.getsockname()[1]

    def reset_after_hello():
        c, _ = ls.accept()
        c.recv(10)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()
    threading.Thread(target=reset_after_hello, daemon=True).start()
    node = Node(pki, lambda ev: ("connect", ("127.0.0.1", port, None)))
    try:
        tls = tunnel(node, pki, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nhost: x\r\n\r\nhello".encode())
        assert read_head(tls).startswith(b"HTTP/1.1 200 ")
        with pytest.raises((ConnectionResetError, ssl.SSLError, OSError)):
            tls.settimeout(5)
            while tls.recv(100):
                pass
            raise OSError("clean EOF where a reset was expected")
        assert wait(lambda: any(e[0] == "finished" and "reset" in e[6] for e in node.events)), node.events
    finally:
        node.close()
        ls.close()


def next_event(core, kind: str, timeout: float = 5.0):
    """The next event of ``kind`` from a core nobody else drains."""
    import select

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        select.select([core.eventfd()], [], [], 0.1)
        for ev in core.events():
            if ev[0] == kind:
                return ev
    raise AssertionError(f"no {kind} event")


def source_core(pki):
    """A core with CLIENT's SVID and an outbound listener on 127.0.0.1 (its socket)."""
    src = dataplane.Core(connect_timeout_s=2.0, handshake_timeout_s=2.0)
    src.set_trust(pki.bundle_pem, "cluster.local")
    chain, key = pki.svid(CLIENT)
    src.set_identity(CLIENT, "client.front.hostmesh.internal", chain, key)
    out = socket.create_server(("127.0.0.1", 0))
    src.listen(out.fileno(), "outbound")
    return src, out


def test_core_to_core_tunnel_and_a_server_with_the_wrong_identity(pki):
    """Two cores: a captured connection on one is tunnelled to the other's :15008. With
    the right expected identity the bytes arrive; with another the source core refuses
    the server (unexpected_identity) and Python hears of it as a failed attempt."""
    ls, port = sink_server(5)
    dst = Node(pki, lambda ev: ("connect", ("127.0.0.1", port, None)))
    src, out = source_core(pki)
    try:
        for expected, want in ((SID, "ok"), ("spiffe://cluster.local/ns/shop/sa/other", "unexpected_identity")):
            c = socket.create_connection(out.getsockname(), 5)
            ev = next_event(src, "conn")
            assert ev[2] == "outbound"
            hs = [("forwarded", 'for="127.0.0.1:1"')]
            src.tunnel(ev[1], "127.0.0.1", dst.port, CLIENT, expected, SNI, f"127.0.0.1:{port}", hs)
            if want == "ok":
                c.sendall(b"hello")
                got = b""
                while d := c.recv(4096):
                    got += d
                assert got == __import__("hashlib").sha256(b"hello").hexdigest().encode() + BACK
            else:
                ev = next_event(src, "failed")
                assert ev[3] == "tls: unexpected_identity", ev
                src.refuse(ev[1], "unexpected_identity")
                with pytest.raises(ConnectionResetError):
                    c.settimeout(5)
                    c.recv(10)
            c.close()
        assert src.stats()["tunnel_handshake_failed_unexpected_identity"] == 1
    finally:
        src.shutdown()
        dst.close()
        out.close()
        ls.close()


def test_connections_past_the_bound_are_reset_and_counted(pki):
    core = dataplane.Core(max_connections=2)
    ls = socket.create_server(("127.0.0.1", 0))
    core.listen(ls.fileno(), "plaintext")
    try:
        held = [socket.create_connection(ls.getsockname(), 5) for _ in range(2)]
        assert wait(lambda: core.stats().get("open") == 2)
        with pytest.raises(ConnectionResetError):  # at connect or at the first read
            extra = socket.create_connection(ls.getsockname(), 5)
            extra.settimeout(5)
            extra.recv(10)
        assert core.stats()["refused_max_connections"] == 1
        held[0].close()  # its decision is never made: the core lets go after a refusal
        (ev, *_rest) = [e for e in core.events() if e[0] == "conn"]
        assert core.refuse(ev[1], "test")
        assert wait(lambda: core.stats()["open"] <= 1)
    finally:
        core.shutdown()
        ls.close()
