"""Reusable tunnel streams in the socket layer: a leg carrying length-prefixed frames
(frames.py) is unframed on the way in and framed on the way out; a direction ends with
its empty frame; a clean end hands the leg back, ready for the next stream; a
connection lost mid-stream or a bad frame is a reset.

The framed leg is plain TCP here (framing does not care about TLS); the far end is a
blocking decoder in a thread, as the destination agent would be."""

import hashlib
import os
import socket
import threading
from types import SimpleNamespace

import pytest
import trio

from agent.proxy import frames
from agent.proxy.engines import open_socket_layer
from tests.unit.test_engine_relay import recv_all, tcp_pair

CFG = SimpleNamespace(engine="epoll", buffer_bytes=256 * 1024, idle_timeout_s=30.0)


class Peer:
    """The far agent's side of the framed leg, on a blocking socket."""

    def __init__(self, sock):
        self.sock = sock
        self.framing = frames.Framing()

    def read_body(self):
        """The stream's bytes up to its empty frame: (sha256, length)."""
        h, n = hashlib.sha256(), 0
        while not self.framing.in_done:
            data = self.sock.recv(1 << 20)
            if not data:
                return None
            for part in self.framing.decode(memoryview(data)):
                h.update(part)
                n += len(part)
        return h.hexdigest(), n

    def send_body(self, data, end=True):
        for i in range(0, len(data), 100_000):
            part = data[i:i + 100_000]
            self.sock.sendall(frames.header(len(part)) + part)
        if end:
            self.sock.sendall(frames.END)

    def next_cycle(self):
        assert self.framing.carry == b""
        self.framing = frames.Framing()


def framed_pair(layer, conn_id, backlog=b""):
    """pod socket <-> engine <-> framed leg <-> Peer, one stream open."""
    leg, far = tcp_pair()
    client, a = tcp_pair()
    layer.add(a, leg, conn_id=conn_id, tag="t", b_framing=frames.Framing(backlog))
    return client, Peer(far), far


async def run_stream(layer, done, leg, peer, conn_id, up, down):
    client, a = tcp_pair()
    layer.add(a, leg, conn_id=conn_id, tag="t", b_framing=frames.Framing())
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
        peer = Peer(far)
        for i, (up, down) in enumerate([(os.urandom(6 << 20), os.urandom(3 << 20)), (b"ping", b""), (b"", b"pong")]):
            fc = await run_stream(layer, done, leg, peer, i + 1, up, down)
            assert (fc.close_reason, fc.bytes_a_to_b, fc.bytes_b_to_a) == ("closed", len(up), len(down))
            assert fc.reuse is not None and fc.reuse[0] is leg and fc.reuse[1].done
            peer.next_cycle()
        leg.close()
        far.close()


async def test_bytes_read_with_the_connect_head_are_unframed_first():
    done = []
    async with open_socket_layer(CFG, done.append) as layer:
        client, peer, far = framed_pair(layer, 5, backlog=frames.header(5) + b"early")
        peer.send_body(b" and later")
        got = await trio.to_thread.run_sync(lambda: b"".join(iter(lambda: client.recv(100), b"")))
        assert got == b"early and later"
        client.close()
        assert await trio.to_thread.run_sync(peer.read_body) == (hashlib.sha256(b"").hexdigest(), 0)
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
        far.sendall(frames.header(frames.MAX_FRAME + 1))
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
            layer.add(a, b, conn_id=1, b_framing=frames.Framing())
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
