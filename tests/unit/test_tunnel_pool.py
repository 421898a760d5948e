"""The client's pool of tunnel connections (agent/proxy/tunnel_client.py), on trio's
mock clock: idle connections are reused most recent first, returned ones are refused
when they are too old or made with a renewed SVID, and the expiry task closes what is
past its limits so an agent at rest holds none."""

import socket
from types import SimpleNamespace

import trio

from agent.proxy import tunnel_client as tc

KEY = (("ns", "sa"), "sni", "spiffe://x/ns/a/sa/b", "10.0.0.1")


class Ctx:
    pass


def pool(nursery, ctx):
    agent = SimpleNamespace(draining=False, identities=SimpleNamespace(client_context=lambda ns, sa: ctx))
    return tc.TunnelPool(agent, nursery)


class Sock:
    """An SSLSocket stand-in: a real socket (for the liveness poll) and a context."""

    def __init__(self, sock, context=None):
        self.sock, self.context = sock, context

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        self.sock.close()


def tunnel(ctx, now):
    a, b = socket.socketpair()
    s = Sock(a)
    return tc.Tunnel(s, KEY, True, now), s, b


def closed(s) -> bool:
    return s.fileno() == -1


async def test_returned_tunnels_are_reused_newest_first_and_expire_when_idle(autojump_clock):
    ctx = Ctx()
    async with trio.open_nursery() as n:
        p = pool(n, ctx)
        ts = [tunnel(ctx, trio.current_time()) for _ in range(3)]
        for t, a, _b in ts:
            a.context = ctx  # made with the SVID in force
            p.give_back(t)
        assert p.stats["returned"] == 3
        got = await p.get(KEY)
        assert got is ts[-1][0] and p.stats["warm_hits"] == 1
        n.start_soon(p.expire)
        await trio.sleep(tc.WARM_MAX_AGE_S + tc.EXPIRE_EVERY_S + 1)
        assert closed(ts[0][1]) and closed(ts[1][1]) and KEY not in p._warm
        assert not closed(ts[2][1])  # the one in use is not the pool's to close
        n.cancel_scope.cancel()


async def test_a_tunnel_made_with_an_older_svid_or_too_old_is_not_kept(autojump_clock):
    ctx = Ctx()
    async with trio.open_nursery() as n:
        p = pool(n, ctx)
        t, a, _b = tunnel(ctx, trio.current_time())
        a.context = Ctx()  # the SVID was renewed since
        p.give_back(t)
        assert closed(a) and p.stats["returned"] == 0
        t, a, _b = tunnel(ctx, trio.current_time() - tc.MAX_LIFE_S)
        a.context = ctx
        p.give_back(t)
        assert closed(a) and p.stats["returned"] == 0
        n.cancel_scope.cancel()
