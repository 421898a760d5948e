"""The socket layer (epoll engine) and the plain trio relay, over real socket pairs:
bytes, half-close, resets, leftovers, close() from outside, TLS legs."""

import datetime
import hashlib
import os
import socket
import ssl
import threading
from types import SimpleNamespace

import pytest
import trio

from agent.proxy.engines import open_socket_layer

CFG = dict(buffer_bytes=256 * 1024, idle_timeout_s=30.0)


@pytest.fixture(params=["epoll", "trio"])
def kind(request):
    return request.param


def tcp_pair():
    """A connected TCP pair on loopback (resets and half-close behave as on the wire)."""
    with socket.create_server(("127.0.0.1", 0)) as ls:
        c = socket.create_connection(ls.getsockname())
        s, _ = ls.accept()
    for x in (c, s):
        x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c, s


class Relay:
    """client <-> a ==engine== b <-> server; finished connections land in .done."""

    def __init__(self, layer):
        self.layer = layer
        self.done = []
        self.event = trio.Event()

    def finished(self, fc):
        self.done.append(fc)
        self.event.set()

    def pair(self, conn_id=1, to_a=b"", to_b=b"", wrap=None):
        client, a = tcp_pair()
        b, server = tcp_pair()
        if wrap:
            a, server_side = wrap(a, client)
            client = server_side
        self.layer.add(a, b, to_a=to_a, to_b=to_b, conn_id=conn_id, tag="t")
        return client, server


async def with_relay(kind, fn):
    relay = Relay(None)
    async with open_socket_layer(SimpleNamespace(engine=kind, **CFG), relay.finished) as layer:
        relay.layer = layer
        await fn(relay)


def recv_all(s):
    h, n = hashlib.sha256(), 0
    while True:
        d = s.recv(1 << 20)
        if not d:
            return h.hexdigest(), n
        h.update(d)
        n += len(d)


async def test_bytes_both_ways_and_counts(kind):
    up, down = os.urandom(8 << 20), os.urandom(5 << 20)

    async def go(relay):
        client, server = relay.pair()
        res = {}

        def side(s, data, key):
            t = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)))
            t.start()
            res[key] = recv_all(s)
            t.join()
            s.close()

        threads = [threading.Thread(target=side, args=(client, up, "c")),
                   threading.Thread(target=side, args=(server, down, "s"))]
        for t in threads:
            t.start()
        for t in threads:
            await trio.to_thread.run_sync(t.join)
        with trio.fail_after(5):
            await relay.event.wait()
        assert res["s"] == (hashlib.sha256(up).hexdigest(), len(up))
        assert res["c"] == (hashlib.sha256(down).hexdigest(), len(down))
        fc = relay.done[0]
        assert (fc.bytes_a_to_b, fc.bytes_b_to_a, fc.close_reason) == (len(up), len(down), "closed")

    await with_relay(kind, go)


async def test_half_close_then_server_still_sends(kind):
    async def go(relay):
        client, server = relay.pair()
        client.sendall(b"request")
        client.shutdown(socket.SHUT_WR)
        got = await trio.to_thread.run_sync(lambda: recv_all(server))
        assert got == (hashlib.sha256(b"request").hexdigest(), 7)  # EOF reached the server
        payload = os.urandom(10 << 20)

        def serve():
            server.sendall(payload)
            server.close()

        t = threading.Thread(target=serve)
        t.start()
        got = await trio.to_thread.run_sync(lambda: recv_all(client))
        t.join()
        assert got == (hashlib.sha256(payload).hexdigest(), len(payload))

    await with_relay(kind, go)


async def test_leftovers_are_delivered_first(kind):
    async def go(relay):
        client, server = relay.pair(to_a=b"to-client:", to_b=b"to-server:")
        client.sendall(b"hello")
        server.sendall(b"world")
        client.shutdown(socket.SHUT_WR)
        server.shutdown(socket.SHUT_WR)
        c = await trio.to_thread.run_sync(lambda: b"".join(iter(lambda: client.recv(100), b"")))
        s = await trio.to_thread.run_sync(lambda: b"".join(iter(lambda: server.recv(100), b"")))
        assert c == b"to-client:world" and s == b"to-server:hello"

    await with_relay(kind, go)


async def test_reset_reaches_the_other_side(kind):
    async def go(relay):
        client, server = relay.pair()
        client.sendall(b"x")
        assert await trio.to_thread.run_sync(lambda: server.recv(1)) == b"x"
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()
        with trio.fail_after(5):
            await relay.event.wait()

        def read():
            try:
                return server.recv(10)
            except ConnectionResetError:
                return "reset"

        assert await trio.to_thread.run_sync(read) == "reset"
        assert relay.done[0].close_reason == "reset"

    await with_relay(kind, go)


async def test_close_from_outside(kind):
    async def go(relay):
        client, server = relay.pair(conn_id=7)
        client.sendall(b"x")
        assert await trio.to_thread.run_sync(lambda: server.recv(1)) == b"x"
        relay.layer.close(7, "policy_changed")
        with trio.fail_after(5):
            await relay.event.wait()
        assert relay.done[0].conn_id == 7

        def read():
            try:
                return server.recv(10)
            except ConnectionResetError:
                return "reset"

        assert await trio.to_thread.run_sync(read) == "reset"

    await with_relay(kind, go)


def _tls_contexts(tmp):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "engine-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1)).sign(key, hashes.SHA256()))
    (tmp / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    s = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    s.minimum_version = ssl.TLSVersion.TLSv1_3
    s.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname, c.verify_mode = False, ssl.CERT_NONE
    return s, c


async def test_tls_leg_half_close_with_bytes_flowing_back(kind, tmp_path):
    """Client (TLS) shuts its write side; the server still sends 10 MiB; all arrives."""
    sctx, cctx = _tls_contexts(tmp_path)

    def wrap(a, client):
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("c", cctx.wrap_socket(client)))
        t.start()
        a2 = sctx.wrap_socket(a, server_side=True)
        t.join()
        return a2, box["c"]

    async def go(relay):
        client, server = relay.pair(wrap=wrap)
        client.sendall(b"GET")
        from agent.proxy.tlsclose import shutdown_write

        payload = os.urandom(10 << 20)
        started = threading.Event()

        def serve():
            assert server.recv(3) == b"GET"
            started.set()
            server.sendall(payload)
            server.close()

        t = threading.Thread(target=serve)
        t.start()
        await trio.to_thread.run_sync(started.wait)
        shutdown_write(client)  # close_notify while 10 MiB flow back

        def read_all():
            h, n = hashlib.sha256(), 0
            while True:
                try:
                    d = client.recv(1 << 20)
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    d = b""
                if not d:
                    return h.hexdigest(), n
                h.update(d)
                n += len(d)

        got = await trio.to_thread.run_sync(read_all)
        t.join()
        assert got == (hashlib.sha256(payload).hexdigest(), len(payload))

    await with_relay(kind, go)
