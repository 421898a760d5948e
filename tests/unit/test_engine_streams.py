"""Reusable tunnel streams in the socket layer: a leg framed with h11 (chunked bodies
both ways, connect.py) is unframed on the way in and framed on the way out; a direction
ends with its last chunk; a clean end hands the leg back, ready for the next stream;
a connection lost mid-stream or broken framing is a reset.

The framed leg is plain TCP here (framing does not care about TLS); the far end is a
blocking h11 server in a thread, as the destination agent would be."""

import hashlib
import os
import socket
import threading
from types import SimpleNamespace

import h11
import pytest
import trio

from agent.proxy.connect import (
    ConnectRequestParser,
    ConnectResponseParser,
    build_response,
    build_stream_request,
    client_connection,
)
from agent.proxy.engines import open_socket_layer
from tests.unit.test_engine_relay import recv_all, tcp_pair

CFG = SimpleNamespace(engine="epoll", buffer_bytes=256 * 1024, idle_timeout_s=30.0)


class Peer:
    """The destination agent's side of the framed leg: an h11 server on a blocking socket."""

    def __init__(self, sock):
        self.sock = sock
        self.parser = ConnectRequestParser(streams=True)

    def accept_stream(self):
        req = None
        while req is None:
            req = self.parser.feed(self.sock.recv(65536))
        assert req.stream
        self.sock.sendall(build_response(200, [], self.parser.conn))
        return req

    def read_body(self):
        """The stream's bytes up to its last chunk."""
        h, n, conn = hashlib.sha256(), 0, self.parser.conn
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = self.sock.recv(1 << 20)
                conn.receive_data(data)
                if not data:
                    return None
                continue
            if isinstance(ev, h11.Data):
                h.update(ev.data)
                n += len(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                return h.hexdigest(), n

    def send_body(self, data, end=True):
        conn = self.parser.conn
        for i in range(0, len(data), 100_000):
            self.sock.sendall(conn.send(h11.Data(data=data[i:i + 100_000])))
        if end:
            self.sock.sendall(conn.send(h11.EndOfMessage()))

    def next_cycle(self):
        self.parser.conn.start_next_cycle()
        self.parser = ConnectRequestParser(self.parser.conn, streams=True)


def open_stream(framing, leg):
    """What tunnel_client does before the hand-off: request, then the response head."""
    leg.sendall(build_stream_request(framing, "10.0.0.2", 80, "10.0.0.1", 5555, "00-" + "1" * 32 + "-" + "2" * 16 + "-01"))
    parser, resp = ConnectResponseParser(framing), None
    while resp is None:
        resp = parser.feed(leg.recv(65536))
    assert resp.status == 200 and resp.leftover == b""


def framed_pair(layer, conn_id):
    """pod socket <-> engine <-> framed leg <-> Peer, one stream open."""
    leg, far = tcp_pair()
    peer, framing = Peer(far), client_connection()
    client, a = tcp_pair()
    t = threading.Thread(target=peer.accept_stream)
    t.start()
    open_stream(framing, leg)
    t.join()
    layer.add(a, leg, conn_id=conn_id, tag="t", b_framing=framing)
    return client, peer, far


async def run_stream(layer, done, framing, leg, peer, conn_id, up, down):
    client, a = tcp_pair()
    for s in (leg,):
        s.setblocking(True)
    t = threading.Thread(target=peer.accept_stream)
    t.start()
    open_stream(framing, leg)
    t.join()
    layer.add(a, leg, conn_id=conn_id, tag="t", b_framing=framing)
    res = {}

    def pod():
        w = threading.Thread(target=lambda: (client.sendall(up), client.shutdown(socket.SHUT_WR)))
        w.start()
        res["pod"] = recv_all(client)
        w.join()
        client.close()

    def far():
        w = threading.Thread(target=lambda: peer.send_body(down))
        w.start()
        res["far"] = peer.read_body()
        w.join()

    threads = [threading.Thread(target=pod), threading.Thread(target=far)]
    for th in threads:
        th.start()
    for th in threads:
        await trio.to_thread.run_sync(th.join)
    with trio.fail_after(5):
        while not any(fc.conn_id == conn_id for fc in done):
            await trio.sleep(0.01)
    assert res["far"] == (hashlib.sha256(up).hexdigest(), len(up))
    assert res["pod"] == (hashlib.sha256(down).hexdigest(), len(down))
    return next(fc for fc in done if fc.conn_id == conn_id)


async def test_streams_carry_bytes_both_ways_and_the_leg_comes_back_for_the_next():
    done = []
    async with open_socket_layer(CFG, done.append) as layer:
        leg, far = tcp_pair()
        peer, framing = Peer(far), client_connection()
        for i, (up, down) in enumerate([(os.urandom(6 << 20), os.urandom(3 << 20)), (b"ping", b""), (b"", b"pong")]):
            fc = await run_stream(layer, done, framing, leg, peer, i + 1, up, down)
            assert (fc.close_reason, fc.bytes_a_to_b, fc.bytes_b_to_a) == ("closed", len(up), len(down))
            assert fc.reuse is not None and fc.reuse[0] is leg and fc.reuse[1] is framing
            assert framing.our_state is h11.IDLE and framing.their_state is h11.IDLE
            peer.next_cycle()
        leg.close()
        far.close()


async def test_a_stream_lost_midway_is_a_reset_and_the_leg_is_not_reused():
    done = []
    async with open_socket_layer(CFG, done.append) as layer:
        client, peer, far = framed_pair(layer, 7)
        peer.send_body(b"partial", end=False)
        assert await trio.to_thread.run_sync(lambda: client.recv(100)) == b"partial"
        far.close()  # no last chunk: the far end went away
        with pytest.raises(ConnectionResetError):
            await trio.to_thread.run_sync(lambda: client.recv(100))
        with trio.fail_after(5):
            while not done:
                await trio.sleep(0.01)
        assert done[0].close_reason == "tunnel_closed" and done[0].reuse is None


async def test_broken_framing_is_a_reset():
    done = []
    async with open_socket_layer(CFG, done.append) as layer:
        client, peer, far = framed_pair(layer, 8)
        far.sendall(b"zz-not-a-chunk-size\r\n")
        with pytest.raises(ConnectionResetError):
            await trio.to_thread.run_sync(lambda: client.recv(100))
        with trio.fail_after(5):
            while not done:
                await trio.sleep(0.01)
        assert done[0].close_reason.startswith("tunnel_protocol") and done[0].reuse is None
        far.close()


async def test_the_trio_relay_refuses_framed_legs():
    async with open_socket_layer(SimpleNamespace(engine="trio", buffer_bytes=65536, idle_timeout_s=30.0),
                                 lambda fc: None) as layer:
        a, b = tcp_pair()
        with pytest.raises(ValueError):
            layer.add(a, b, conn_id=1, b_framing=client_connection())
        a.close()
        b.close()


async def test_the_far_end_finishing_last_ends_the_stream():
    """The pod half-closes first; the far end's last chunk (plain data, no hang-up
    event) is what completes the stream."""
    done = []
    async with open_socket_layer(CFG, done.append) as layer:
        client, peer, far = framed_pair(layer, 9)
        client.sendall(b"request")
        client.shutdown(socket.SHUT_WR)
        assert await trio.to_thread.run_sync(peer.read_body) == (hashlib.sha256(b"request").hexdigest(), 7)
        await trio.sleep(0.1)
        assert not done
        peer.send_body(b"answer")
        assert await trio.to_thread.run_sync(lambda: recv_all(client)) == (hashlib.sha256(b"answer").hexdigest(), 6)
        with trio.fail_after(5):
            while not done:
                await trio.sleep(0.01)
        assert done[0].close_reason == "closed" and done[0].reuse is not None
        far.close()
