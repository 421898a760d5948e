"""Issue 15 item 11: an unexpected error while the socket layer serves one connection
ends that connection only (reset, reported ``error: <Class>``, counted); every other
connection keeps flowing and the layer keeps accepting new ones."""

import socket
from types import SimpleNamespace

import pytest
import trio

from agent.proxy import engine as engine_mod
from agent.proxy import relay_trio
from agent.proxy.engines import open_socket_layer
from tests.unit.test_engine_relay import CFG, Relay, recv_all


@pytest.fixture(params=["epoll", "trio"])
def kind(request):
    return request.param


def _poison(monkeypatch, kind):
    """The first connection (id 1) raises inside the layer; the others work."""
    if kind == "epoll":
        real = engine_mod.Engine._pump

        def pump(self, src, dst):
            if src.pair.id == 1:
                raise RuntimeError("boom")
            return real(self, src, dst)

        monkeypatch.setattr(engine_mod.Engine, "_pump", pump)
    else:
        real_relay = relay_trio.relay

        async def relay(a, b, **kw):
            if kw["conn_id"] == 1:
                raise RuntimeError("boom")
            return await real_relay(a, b, **kw)

        monkeypatch.setattr(relay_trio, "relay", relay)


async def test_one_connections_error_ends_only_that_connection(kind, monkeypatch):
    _poison(monkeypatch, kind)
    relay = Relay(None)
    async with open_socket_layer(SimpleNamespace(engine=kind, **CFG), relay.finished) as layer:
        relay.layer = layer
        bad_client, bad_server = relay.pair(conn_id=1)
        try:
            bad_client.sendall(b"x")
        except ConnectionResetError:
            pass  # the layer may have failed (and reset) it already, when it was added
        with trio.fail_after(5):
            while not relay.done:
                await relay.event.wait()
                relay.event = trio.Event()
        assert relay.done[0].conn_id == 1 and relay.done[0].close_reason == "error: RuntimeError"
        # the layer still carries a new connection, bytes and EOF both ways
        client, server = relay.pair(conn_id=2)
        client.sendall(b"hello")
        client.shutdown(socket.SHUT_WR)
        got = await trio.to_thread.run_sync(lambda: recv_all(server))
        assert got[1] == 5
        server.sendall(b"back")
        server.shutdown(socket.SHUT_WR)
        assert (await trio.to_thread.run_sync(lambda: recv_all(client)))[1] == 4
        for s in (bad_client, bad_server, client, server):
            s.close()
