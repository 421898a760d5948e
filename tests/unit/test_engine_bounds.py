"""The socket layer's bounds: backpressure keeps memory bounded behind a slow reader,
idle connections are closed, close() works from any thread, snapshot/statistics."""

import hashlib
import os
import socket
import threading
from types import SimpleNamespace

import pytest
import trio

from agent.proxy.engine import Engine, open_engine
from agent.proxy.engines import open_socket_layer
from tests.unit.test_engine_relay import Relay, recv_all, tcp_pair

BUF = 256 * 1024


def _pair_through(layer, conn_id=1):
    client, a = tcp_pair()
    b, server = tcp_pair()
    layer.add(a, b, conn_id=conn_id, tag="t")
    return client, server


def _held(eng: Engine) -> int:
    """Bytes the engine holds for connections (what backpressure must bound)."""
    return sum(len(leg.pending) for leg in list(eng._legs.values()) if leg.pending is not None)


async def test_slow_reader_backpressure_bounds_engine_memory():
    payload = os.urandom(64 << 20)
    async with open_engine(SimpleNamespace(buffer_bytes=BUF, idle_timeout_s=30.0)) as eng:
        client, server = _pair_through(eng)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sender = threading.Thread(target=lambda: (client.sendall(payload), client.shutdown(socket.SHUT_WR)))
        sender.start()
        await trio.sleep(0.5)
        first = eng.snapshot()[0].bytes_a_to_b
        await trio.sleep(0.5)
        # nobody reads the server: the engine stopped reading the client
        assert eng.snapshot()[0].bytes_a_to_b == first
        assert first < 16 << 20, first  # kernel buffers + one engine buffer, not 64 MiB
        assert _held(eng) <= BUF
        got = await trio.to_thread.run_sync(lambda: recv_all(server))
        await trio.to_thread.run_sync(sender.join)
        assert got == (hashlib.sha256(payload).hexdigest(), len(payload))
        client.close()
        server.close()


@pytest.mark.parametrize("kind", ["epoll", "trio"])
async def test_idle_connection_is_closed_with_a_reset(kind):
    relay = Relay(None)
    cfg = SimpleNamespace(engine=kind, buffer_bytes=BUF, idle_timeout_s=0.3)
    async with open_socket_layer(cfg, relay.finished) as layer:
        client, server = _pair_through(layer)
        client.sendall(b"x")
        assert await trio.to_thread.run_sync(lambda: server.recv(1)) == b"x"
        with trio.fail_after(5):
            await relay.event.wait()
        assert relay.done[0].close_reason == "idle_timeout"

        def read():
            try:
                return server.recv(10)
            except ConnectionResetError:
                return "reset"

        assert await trio.to_thread.run_sync(read) == "reset"


async def test_active_connection_is_not_idle():
    relay = Relay(None)
    cfg = SimpleNamespace(engine="epoll", buffer_bytes=BUF, idle_timeout_s=1.5)
    async with open_socket_layer(cfg, relay.finished) as layer:
        client, server = _pair_through(layer)
        for _ in range(8):  # 2.4 s of traffic, longer than the timeout
            client.sendall(b"ping")
            assert await trio.to_thread.run_sync(lambda: server.recv(4)) == b"ping"
            await trio.sleep(0.3)
        assert relay.done == []


async def test_close_from_a_foreign_thread_within_a_second():
    relay = Relay(None)
    async with open_engine(SimpleNamespace(buffer_bytes=BUF, idle_timeout_s=30.0)) as eng:
        eng.on_finished = relay.finished
        client, server = _pair_through(eng, conn_id=42)
        t = threading.Thread(target=eng.close, args=(42, "policy_changed"))
        start = trio.current_time()
        t.start()
        with trio.fail_after(1):
            await relay.event.wait()
        t.join()
        assert trio.current_time() - start < 1
        assert (relay.done[0].conn_id, relay.done[0].close_reason) == (42, "policy_changed")
        assert eng.snapshot() == []


async def test_snapshot_and_statistics_count_bytes():
    async with open_engine(SimpleNamespace(buffer_bytes=BUF, idle_timeout_s=30.0)) as eng:
        client, server = _pair_through(eng, conn_id=5)
        client.sendall(b"a" * 1000)
        await trio.to_thread.run_sync(lambda: server.recv(1000, socket.MSG_WAITALL))
        server.sendall(b"b" * 10)
        await trio.to_thread.run_sync(lambda: client.recv(10, socket.MSG_WAITALL))
        with trio.fail_after(2):  # the counters move just after the bytes do
            while eng.snapshot()[0].bytes_b_to_a < 10:
                await trio.sleep(0.01)
        [live] = eng.snapshot()
        assert (live.conn_id, live.tag, live.bytes_a_to_b, live.bytes_b_to_a) == (5, "t", 1000, 10)
        assert live.age_s >= 0
        st = eng.statistics()
        assert (st["engine"], st["connections"], st["added"]) == ("epoll", 1, 1)
        client.close()
        server.close()


async def test_many_connections_share_one_thread():
    async with open_engine(SimpleNamespace(buffer_bytes=BUF, idle_timeout_s=30.0)) as eng:
        pairs = [_pair_through(eng, conn_id=i) for i in range(200)]
        for i, (c, _) in enumerate(pairs):
            c.sendall(i.to_bytes(4, "big") * 100)
        for i, (_, s) in enumerate(pairs):
            got = await trio.to_thread.run_sync(lambda s=s: s.recv(400, socket.MSG_WAITALL))
            assert got == i.to_bytes(4, "big") * 100
        assert eng.statistics()["connections"] == 200
        assert sum(t.name == "hostmesh-engine" for t in threading.enumerate()) == 1
        for c, s in pairs:
            c.close()
            s.close()


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


async def test_idle_connections_cost_under_4_kib_each():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 5000:
        pytest.skip("needs 5000 file descriptors")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 5000) if hard == resource.RLIM_INFINITY else hard, hard))
    n = 1000
    ls = socket.create_server(("127.0.0.1", 0), backlog=4096)
    ends, legs = [], []
    for _ in range(2 * n):
        ends.append(socket.create_connection(ls.getsockname()))
        legs.append(ls.accept()[0])
    try:
        async with open_engine(SimpleNamespace(buffer_bytes=BUF, idle_timeout_s=3600.0)) as eng:
            before = _rss_kib()
            for i in range(n):
                eng.add(legs[2 * i], legs[2 * i + 1], conn_id=i)
            with trio.fail_after(5):
                while eng.statistics()["connections"] < n:
                    await trio.sleep(0.02)
            per_conn = (_rss_kib() - before) / n
            assert per_conn <= 4, f"{per_conn:.2f} KiB per idle connection"
    finally:
        for s in ends + legs + [ls]:
            s.close()
