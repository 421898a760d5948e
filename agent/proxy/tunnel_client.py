"""The source side of the mTLS tunnel: a TLS connection to the destination node's
:15008 presenting the source workload's SVID, checked to be the expected destination
identity, then one HTTP/1.1 CONNECT (SPEC.md "Tunnel").

Handshakes are the expensive part (NOTES.md: 1–2 ms of CPU per mutual handshake), so
``TunnelPool`` keeps a few connections handshaken ahead of need per (source identity,
destination identity, node), and TLS 1.3 sessions are resumed by the identity layer.
"""

from __future__ import annotations

import logging
import select
import socket
from dataclasses import dataclass

import trio

from agent.proxy import aio
from agent.proxy.conns import Conn
from agent.proxy.plan import Route
from agent.proxy.sockets import connect

logger = logging.getLogger("hostmesh.tunnel")

# Handshaken connections kept ready per key; a few absorb a burst without a handshake
# on the critical path, more would hold server resources for nothing.
WARM_PER_KEY = 2
# A warm connection older than this is dropped rather than used (the peer may have
# closed it; ztunnel's pool idle timeout is of the same order).
WARM_MAX_AGE_S = 20.0
# A TLS 1.3 ticket is resumed by every new connection of its key for this long, then
# replaced by a fresh one (servers issue tickets valid for hours; OpenSSL's default 2 h).
SESSION_REFRESH_S = 30.0


@dataclass
class TunnelResult:
    status: int
    reason: str = ""
    policy: str | None = None
    sock: socket.socket | None = None
    leftover: bytes = b""


class TunnelPool:
    def __init__(self, agent, nursery: trio.Nursery) -> None:
        self.agent = agent
        self._nursery = nursery
        self._warm: dict[tuple, list[tuple[float, socket.socket]]] = {}
        self._filling: set[tuple] = set()
        # TLS 1.3 session tickets per key: a resumed handshake skips the certificate
        # exchange and signature (NOTES.md: ~650 resumed vs ~360 full mTLS handshakes/s)
        self._sessions: dict[tuple, object] = {}
        self.stats = {"handshakes": 0, "resumed": 0, "warm_hits": 0, "warm_misses": 0, "handshake_failures": 0}

    async def _handshake(self, key: tuple) -> socket.socket:
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
        return tls

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

    async def get(self, key: tuple) -> socket.socket:
        now = trio.current_time()
        warm = self._warm.get(key) or []
        sock = None
        while warm:
            born, s = warm.pop()
            if now - born < WARM_MAX_AGE_S and _alive(s):
                sock = s
                break
            aio.close(s)
        if sock is not None:
            self.stats["warm_hits"] += 1
        else:
            self.stats["warm_misses"] += 1
            sock = await self._handshake(key)
        self._refill(key)
        return sock

    def _refill(self, key: tuple) -> None:
        if key in self._filling or len(self._warm.get(key, ())) >= WARM_PER_KEY or self.agent.draining:
            return
        self._filling.add(key)
        self._nursery.start_soon(self._fill, key)

    async def _fill(self, key: tuple) -> None:
        try:
            while len(self._warm.get(key, ())) < WARM_PER_KEY and not self.agent.draining:
                s = await self._handshake(key)
                self._warm.setdefault(key, []).append((trio.current_time(), s))
        except (OSError, trio.TooSlowError, ValueError) as e:
            self.stats["handshake_failures"] += 1
            logger.debug("warm handshake failed: %s", e)
        finally:
            self._filling.discard(key)

    def close(self) -> None:
        for lst in self._warm.values():
            for _, s in lst:
                aio.close(s)
        self._warm.clear()


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
        if result.status == 502 and result.reason == "tunnel_closed" and attempt == 1:
            agent.count("tunnel_stale_retries")
            continue
        return result
    return result


async def _exchange(agent, conn: Conn, p: Route, key: tuple) -> TunnelResult:
    from agent.proxy.connect import ConnectResponseParser, build_connect, new_traceparent

    try:
        with trio.fail_after(agent.config.dataplane.connect_timeout_s + agent.config.identity.handshake_timeout_s):
            tls = await agent.tunnels.get(key)
            traceparent, trace_id = new_traceparent()
            conn.trace_id, conn.span_id = trace_id, traceparent.split("-")[2]
            await aio.send_all(tls, build_connect(p.dst_ip, p.dst_port, conn.src_ip, conn.src_port, traceparent))
            parser = ConnectResponseParser()
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
    return TunnelResult(200, sock=tls, leftover=resp.leftover)
