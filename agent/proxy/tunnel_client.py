"""The source side of the mTLS tunnel: a TLS connection to the destination node's
:15008 presenting the source workload's SVID, checked to be the expected destination
identity, then one CONNECT (SPEC.md "Tunnel"). When both agents offer ALPN
``hostmesh-streams/1`` the bytes after ``200`` are framed (frames.py) and the TLS
connection comes back here, once both directions ended, for the next connection of the
same key.

Handshakes are the expensive part (NOTES.md: 1–2 ms of CPU per mutual handshake), so
``TunnelPool`` keeps connections per (source identity, destination identity, node):
ones that carried a stream and are idle, and a few handshaken ahead of need; TLS 1.3
sessions are resumed for the handshakes that remain (docs/decisions/0001).
"""

from __future__ import annotations

import ctypes
import logging
import select
import socket
import ssl
from dataclasses import dataclass

import trio

from agent.proxy import aio
from agent.proxy.connect import streams_negotiated
from agent.proxy.conns import Conn
from agent.proxy.contain import contained
from agent.proxy.plan import Route
from agent.proxy.sockets import connect

logger = logging.getLogger("hostmesh.tunnel")

# Handshaken connections kept ready per key; a few absorb a burst without a handshake
# on the critical path, more would hold server resources for nothing.
WARM_PER_KEY = 2
# Idle connections kept per key once their stream ended (reusable streams): enough for
# the key's usual concurrency; beyond it they are closed.
IDLE_PER_KEY = 64
# An idle connection older than this is dropped rather than used: well under the
# server's idle timeout (inbound.STREAM_IDLE_S), so the server never closes one that
# is being reused (ztunnel's pool idle timeout is of the same order).
WARM_MAX_AGE_S = 20.0
# A TLS connection carries streams for at most this long, then a fresh handshake (with
# the then-current certificates and trust) replaces it.
MAX_LIFE_S = 120.0
# How often pooled connections past their limits are closed.
EXPIRE_EVERY_S = 5.0
# A TLS 1.3 ticket is resumed by every new connection of its key for this long, then
# replaced by a fresh one (servers issue tickets valid for hours; OpenSSL's default 2 h).
SESSION_REFRESH_S = 30.0


class Tunnel:
    """One TLS connection to a peer's :15008 for pool key ``key``; ``reusable`` when
    ALPN chose streams."""

    __slots__ = ("sock", "key", "reusable", "born", "idle_since", "streams")

    def __init__(self, sock: ssl.SSLSocket, key: tuple, reusable: bool, now: float) -> None:
        self.sock, self.key, self.reusable = sock, key, reusable
        self.born = self.idle_since = now
        self.streams = 0  # carried so far

    def usable(self, now: float) -> bool:
        """Within its idle and life limits (a pooled connection past them is closed)."""
        return now - self.idle_since < WARM_MAX_AGE_S and now - self.born < MAX_LIFE_S


@dataclass
class TunnelResult:
    status: int
    reason: str = ""
    policy: str | None = None
    leftover: bytes = b""
    tunnel: Tunnel | None = None  # status 200: the connection the stream runs on


class TunnelPool:
    def __init__(self, agent, nursery: trio.Nursery) -> None:
        self.agent = agent
        self._nursery = nursery
        self._warm: dict[tuple, list[Tunnel]] = {}
        self._filling: set[tuple] = set()
        # server side: cancel scopes of connections waiting for their next stream
        # (cancelled on drain and when the trust changes)
        self.idle: set[trio.CancelScope] = set()
        # TLS 1.3 session tickets per key: a resumed handshake skips the certificate
        # exchange and signature (NOTES.md: ~650 resumed vs ~360 full mTLS handshakes/s)
        self._sessions: dict[tuple, object] = {}
        self.stats = {"handshakes": 0, "resumed": 0, "warm_hits": 0, "warm_misses": 0, "handshake_failures": 0,
                      "streams": 0, "reused": 0, "returned": 0}

    async def _handshake(self, key: tuple) -> Tunnel:
        from agent.identity.tls import tls_handshake_client

        (src_ns, src_sa), sni, expected, node_address = key
        ids = self.agent.identities
        ctx = ids.client_context(src_ns, src_sa)
        raw = await connect((node_address, self.agent.config.ports.tunnel), bind_src=None,
                            timeout=self.agent.config.dataplane.connect_timeout_s)
        try:
            held = self._sessions.get(key)
            # a session belongs to the context that made it; a renewed SVID means a new one
            session = held[1] if held is not None and held[0] is ctx else None
            try:
                tls = await tls_handshake_client(raw, ctx, sni, self.agent.config.identity.handshake_timeout_s,
                                                 expected_id=expected, trust_domain=self.agent.config.identity.trust_domain,
                                                 session=session)
            except ValueError:
                if session is None:
                    raise
                # a ticket the server no longer accepts (restart, new certificate): forget it
                self._sessions.pop(key, None)
                raise
        except BaseException:
            aio.close(raw)
            raise
        self.stats["handshakes"] += 1
        if tls.session_reused:
            self.stats["resumed"] += 1
        return Tunnel(tls, key, streams_negotiated(tls, ids.alpn), trio.current_time())

    def remember_session(self, key: tuple, tls) -> None:
        """After the CONNECT exchange the server's session tickets have arrived. Reading
        ``tls.session`` serializes the session (~5% of a connection's CPU), and a ticket can
        be resumed many times, so one is kept per key and refreshed every
        ``SESSION_REFRESH_S`` (or when the SVID, hence the context, changed)."""
        held = self._sessions.get(key)
        now = trio.current_time()
        if held is not None and held[0] is tls.context and now - held[2] < SESSION_REFRESH_S:
            return
        try:
            sess = tls.session
        except (AttributeError, ValueError):
            return
        if sess is not None and sess.has_ticket:
            self._sessions[key] = (tls.context, sess, now)

    async def get(self, key: tuple) -> Tunnel:
        """The most recently idle connection of ``key`` that is still good, else a fresh
        handshake; the warm pool is topped up behind it."""
        now = trio.current_time()
        warm = self._warm.get(key) or []
        t = None
        while warm:
            c = warm.pop()
            if c.usable(now) and _alive(c.sock):
                t = c
                break
            aio.close(c.sock)
        if t is not None:
            self.stats["warm_hits"] += 1
            if t.streams:
                self.stats["reused"] += 1
        else:
            self.stats["warm_misses"] += 1
            t = await self._handshake(key)
        self._refill(key)
        return t

    def give_back(self, t: Tunnel) -> None:
        """The socket layer finished a stream on ``t`` cleanly (called in the trio thread)."""
        sock = t.sock
        now = trio.current_time()
        ids = self.agent.identities
        try:
            current = ids.client_context(*t.key[0]) if ids is not None else None
        except ValueError:  # the source identity left this node
            current = None
        pool = self._warm.setdefault(t.key, [])
        if (self.agent.draining or sock.context is not current or now - t.born >= MAX_LIFE_S
                or len(pool) >= IDLE_PER_KEY):
            aio.close(sock)  # a renewed SVID or trust means a fresh handshake
            return
        t.idle_since = now
        self.stats["returned"] += 1
        pool.append(t)

    def _refill(self, key: tuple) -> None:
        if key in self._filling or len(self._warm.get(key, ())) >= WARM_PER_KEY or self.agent.draining:
            return
        self._filling.add(key)
        self._nursery.start_soon(contained, self.agent, None, self._fill, key)

    async def _fill(self, key: tuple) -> None:
        try:
            while len(self._warm.get(key, ())) < WARM_PER_KEY and not self.agent.draining:
                t = await self._handshake(key)
                self._warm.setdefault(key, []).append(t)
        except (OSError, trio.TooSlowError, ValueError) as e:
            self.stats["handshake_failures"] += 1
            logger.debug("warm handshake failed: %s", e)
        finally:
            self._filling.discard(key)

    async def expire(self) -> None:
        """Every ``EXPIRE_EVERY_S``, close pooled connections past their idle or life
        limit: an agent at rest holds no TLS connections (each keeps ~30 KiB of OpenSSL
        state on both agents) and the peer's waiting task ends."""
        while True:
            await trio.sleep(EXPIRE_EVERY_S)
            now = trio.current_time()
            closed = 0
            for key in list(self._warm):
                keep = []
                for t in self._warm[key]:
                    if t.usable(now):
                        keep.append(t)
                    else:
                        aio.close(t.sock)
                        closed += 1
                if keep:
                    self._warm[key] = keep
                else:
                    del self._warm[key]
            if closed and not self._warm:
                release_memory()  # the pool emptied: load has passed

    def drop(self, key: tuple) -> None:
        for t in self._warm.pop(key, ()):
            aio.close(t.sock)

    def spawn(self, fn, *args) -> None:
        self._nursery.start_soon(contained, self.agent, None, fn, *args)

    def close(self) -> None:
        """Close every idle and warm connection, both sides (drain, new trust)."""
        for lst in self._warm.values():
            for t in lst:
                aio.close(t.sock)
        self._warm.clear()
        for scope in list(self.idle):
            scope.cancel()


def release_memory() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``): OpenSSL
    and the interpreter free per-connection state after a burst, but glibc keeps the
    pages, so an agent back at rest would hold its peak. A no-op elsewhere."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _alive(s: socket.socket) -> bool:
    """A warm TLS connection the peer has not shut down (pending bytes may be session
    tickets, so only a hang-up, reset or error says it is dead)."""
    p = select.poll()
    p.register(s.fileno(), select.POLLIN | select.POLLRDHUP)
    for _fd, ev in p.poll(0):
        if ev & (select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL):
            return False
    return True


async def open_tunnel(agent, conn: Conn, p: Route) -> TunnelResult:
    """TLS to the destination node, then CONNECT; the result carries the status."""
    from agent.identity.spiffe import sni_for

    if agent.identities is None or conn.src is None:
        return TunnelResult(503, "no_identity")
    td = agent.config.identity.trust_domain
    dst = p.dst
    if dst is None:
        return TunnelResult(503, "unknown_destination")
    sni = sni_for(dst.namespace, dst.service_account, td)
    expected = dst.spiffe_id(td)
    key = (conn.src.identity_key, sni, expected, p.node_address)
    for attempt in (1, 2):
        result = await _exchange(agent, conn, p, key)
        # a pooled connection the peer closed meanwhile: one retry on a fresh handshake
        # (the peer closes its idle ones together — drain, new trust — so the key's other
        # pooled connections are dropped too)
        if result.status == 502 and result.reason == "tunnel_closed" and attempt == 1:
            agent.count("tunnel_stale_retries")
            agent.tunnels.drop(key)
            continue
        return result
    return result


async def _exchange(agent, conn: Conn, p: Route, key: tuple) -> TunnelResult:
    from agent.proxy.connect import ConnectResponseParser, build_connect, new_traceparent

    try:
        with trio.fail_after(agent.config.dataplane.connect_timeout_s + agent.config.identity.handshake_timeout_s):
            t = await agent.tunnels.get(key)
            tls = t.sock
            traceparent, trace_id = new_traceparent()
            conn.trace_id, conn.span_id = trace_id, traceparent.split("-")[2]
            head = build_connect(p.dst_ip, p.dst_port, conn.src_ip, conn.src_port, traceparent)
            parser = ConnectResponseParser()
            try:
                await aio.send_all(tls, head)
            except OSError:  # a pooled connection the peer closed meanwhile
                aio.close(tls)
                return TunnelResult(502, "tunnel_closed")
            resp = None
            while resp is None:
                try:
                    data = await aio.recv_some(tls)
                except OSError:
                    data = b""
                if not data:
                    aio.close(tls)
                    return TunnelResult(502, "tunnel_closed")
                resp = parser.feed(data)
    except trio.TooSlowError:
        return TunnelResult(504, "tunnel_timeout")
    except OSError as e:
        agent.count("tunnel_connect_failures")
        return TunnelResult(502, f"tunnel_failed: {e.strerror or e}")
    except ValueError as e:  # identity rejected (named reason) or malformed response
        agent.count("tunnel_rejected")
        return TunnelResult(502, f"tunnel_rejected: {e}")
    agent.tunnels.remember_session(key, tls)
    if resp.status != 200:
        aio.close(tls)
        policy = dict(resp.headers).get("x-hostmesh-policy")
        return TunnelResult(resp.status, f"tunnel_status_{resp.status}", policy)
    t.streams += 1
    if t.reusable:
        agent.tunnels.stats["streams"] += 1
    return TunnelResult(200, leftover=resp.leftover, tunnel=t)
