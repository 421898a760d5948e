"""Socket helpers: marks, TCP_NODELAY, connect outcomes, the preserved source."""

import os
import socket

import pytest

from agent import AGENT_MARK
from agent.proxy.sockets import connect, make_listener

# SO_MARK needs CAP_NET_ADMIN
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="SO_MARK needs CAP_NET_ADMIN")


def _opts(s):
    return (s.getsockopt(socket.SOL_SOCKET, socket.SO_MARK),
            s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_listener_and_connect_are_marked_and_nodelay(host):
    ls = make_listener(host, 0, transparent=False)
    port = ls.getsockname()[1]
    assert _opts(ls) == (AGENT_MARK, True)
    c = await connect((host, port), timeout=2)
    assert _opts(c) == (AGENT_MARK, True)
    a, _ = ls.accept()
    assert a.getsockname()[:2] == (host, port)
    for s in (a, c, ls):
        s.close()


async def test_connect_refused_is_an_oserror():
    ls = socket.create_server(("127.0.0.1", 0))
    port = ls.getsockname()[1]
    ls.close()
    with pytest.raises(ConnectionRefusedError):
        await connect(("127.0.0.1", port), timeout=2)


async def test_connect_preserving_a_local_source():
    ls = make_listener("127.0.0.1", 0, transparent=False)
    c = await connect(ls.getsockname(), bind_src="127.0.0.2", timeout=2)
    a, peer = ls.accept()
    assert peer[0] == "127.0.0.2"
    for s in (a, c, ls):
        s.close()
