"""The native engine's glue (``dataplane.engine: native``): the Rust core accepts,
terminates tunnel TLS and moves the bytes; this module answers its questions with the
agent's decisions. It is the one data plane (decisions/0003).

Per connection the core sends one event and waits (non-blocking for us) for one command:
``plan.plan_outbound`` / ``plan.plan_inbound``, PeerAuthentication and ``rbac`` decide,
``traffic_path`` counts attempts for the traffic rules; a failed attempt comes back as
an event and the next route of the plan is tried. HTTP-routed services are piped to
``http_route``, whose upstream attempts come back as loopback legs (native_http.py).
Finished connections become the same records (finish.finish), so telemetry,
/v1/connections and policy re-checks work unchanged.
Connections whose requests must be checked one by one (L7 rules) are served as HTTP by
the core, one decision per request head (native_http.py, l7core.py). Identities, the trust bundle and the map local pod
address -> identity (the certificate the core presents on a pod's :15008) are pushed
into the core when they change (native_identity.py). Tunnels speak
``dataplane.tunnel_protocol`` (HBONE by default: the destination pod's :15008, the outer
socket bound to the source pod; decisions in hbone.py; docs/wire.md). Nothing here
blocks: every handler runs in well under a millisecond on the trio thread, except the L7
path's upstream connect (its own task).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from agent import dataplane
from agent.proxy import enforce, hbone, plan, repeat, traffic_path
from agent.proxy.conns import Conn, LiveConn
from agent.proxy.finish import emit, finish, reason_token
from agent.proxy.forwarded import claimed_source
from agent.proxy.l7 import http_reporters
from agent.proxy.native_http import HttpPaths
from agent.proxy.native_identity import CoreIdentities
from agent.proxy.native_repeat import RepeatFlows, _Pending
from agent.proxy.sockets import make_listener
from agent.proxy.tunnel_head import Heads

logger = logging.getLogger("hostmesh.native")

# How often SVIDs and the trust bundle are compared with what the core holds (the
# source side also checks its own identity before each tunnel, so a new pod's first
# connection never waits for this), and the core's counters copied into the agent's.
IDENTITY_SYNC_S = 0.25
# The core's gauges (not counters): shown in /v1/stats "engine", never as events.
_GAUGES = frozenset({"connections", "open", "pending_decisions", "events_queued", "identities",
                     "decision_cache_entries", "decision_generation",
                     "l7_pending_requests",
                     "hbone_connections", "hbone_streams", "hbone_pooled"})
# The answer to a stream denied by policy: HBONE's (ztunnel's) and SPEC.md's CONNECT's.
DENIED_STATUS = {"hbone": 401, "connect": 403}


class NativeEngine(HttpPaths, RepeatFlows):
    """``agent.engine``: close, snapshot and statistics for the admin API and policy
    re-checks, plus the event loop that answers the core."""

    in_engine = True

    def __init__(self, agent, core, nursery: trio.Nursery) -> None:
        self.agent, self.core, self._nursery = agent, core, nursery
        self._pending: dict[int, _Pending] = {}  # core id -> waiting for a decision
        self._live: dict[int, Conn] = {}  # core id -> established
        # core id -> its plan and the route it took (endpoint health), until it finishes
        # (a cached connection's: its repeat.Entry, _retried)
        self._retry: dict[int, _Pending | repeat.Entry] = {}
        self.ids = CoreIdentities(agent, core)
        self._connect_only: dict[str, float] = {}  # node address -> until (trio clock): no HBONE there
        self._leg_addr: tuple[str, int] | None = None  # the loopback listener of open_leg
        self._legs: dict[int, tuple[Conn, list]] = {}  # leg's local port -> (its Conn, its routes)
        self._heads = Heads()  # per workload pair: IDs, SNI, baggage of its tunnels
        self._http: dict[int, Any] = {}  # core id -> l7core.L7Conn: served as HTTP by the core
        # answers for repeat tunnel flows stored in the core, one generation at a time
        self._repeat = repeat.Table()
        self._remembering = agent.config.dataplane.repeat_decisions
        self._stash: tuple | None = None  # (entry id, conn, route, pending): stored by _outbound
        self._world = repeat.world(agent)
        core.set_generation(self._repeat.generation)
        agent.policies.on_swap.append(lambda _generation: self.decisions_changed())
        traffic = getattr(agent, "traffic", None)
        if traffic is not None:
            traffic.on_change.append(self.decisions_changed)

    # ---- agent.engine interface ----------------------------------------------------
    def close(self, conn_id: int, reason: str) -> None:
        conn = self.agent.conns.get(conn_id)
        cid = conn.core_id if conn is not None else None
        if cid is not None and self._live.get(cid) is conn:
            self.core.close(cid, reason)

    def snapshot(self) -> list[LiveConn]:
        now = time.time()
        out = []
        for cid, _kind, mode, _src, _dst, sent, received, start in self.core.connections():
            conn = self._live.get(cid)
            if conn is not None:
                out.append(LiveConn(conn.id, mode, sent, received, now - start))
        return out

    def live_counts(self) -> Iterator[tuple[Conn, int, int]]:
        """(connection, bytes to the destination, bytes back) of each one the core has
        bridged, read from one packed bytes object (the telemetry tick's: no tuple or
        LiveConn per connection, so 8,000 idle connections leave no freed peak behind)."""
        live = self._live
        packed = memoryview(self.core.live_counts()).cast("Q")
        for i in range(0, len(packed), 3):
            conn = live.get(packed[i])
            if conn is not None:
                yield conn, packed[i + 1], packed[i + 2]

    def statistics(self) -> dict[str, Any]:
        return {"engine": "native", **self.core.stats()}

    # ---- identities --------------------------------------------------------------
    def sync_identities(self) -> None:
        self.ids.sync()

    def sync_counters(self) -> None:
        """The core's counters as ``native_<name>`` in the agent's (/v1/stats counters,
        /metrics ``hostmesh_events_total``): handshakes, resumptions, refusals by reason."""
        counters = self.agent.counters
        for k, v in self.core.stats().items():
            if k not in _GAUGES:
                counters[f"native_{k}"] = v

    async def _sync_loop(self) -> None:
        while True:
            try:
                self.sync_identities()
            except ValueError as e:
                logger.error("identity material not pushed to the core: %s", e)
            self.sync_counters()
            await trio.sleep(IDENTITY_SYNC_S)

    # ---- events --------------------------------------------------------------------
    async def run(self) -> None:
        fd = self.core.eventfd()
        while True:
            await trio.lowlevel.wait_readable(fd)
            self._check_world()
            for ev in self.core.events():
                try:
                    getattr(self, "_on_" + ev[0])(*ev[1:])
                except Exception:  # one connection's error ends that connection only
                    logger.exception("native event %s failed", ev[0])
                    self.core.refuse(ev[1], "internal_error", 503)

    def _on_conn(self, cid: int, kind: str, src, dst, tunnel) -> None:
        if kind == "outbound":
            self._outbound(cid, src, dst)
        elif kind == "plaintext":
            self._plaintext(cid, src, dst)
        else:
            self._tunnel(cid, src, tunnel)

    def _outbound(self, cid: int, src, dst) -> None:
        if tuple(dst) == self._leg_addr:
            return self._leg(cid, src)
        with repeat.counting(self.agent) as counts:
            self._outbound_decide(cid, src, dst)
        stash, self._stash = self._stash, None
        if stash is not None:  # its tunnel was stored in the core (_tunnel_command)
            n, conn, route, st = stash
            self._repeat.put(n, repeat.Entry(repeat.instance(conn, conn.src_port, conn.start), "peer",
                                             tuple(counts), None, self._repeat.generation, tuple(st.plans), route,
                                             st.protocol))

    def _outbound_decide(self, cid: int, src, dst) -> None:
        agent = self.agent
        agent.count("connections_opened_outbound")
        plans = plan.plan_outbound(src[0], dst[0], dst[1], agent.view, agent.health, trio.current_time())
        w = agent.registry.by_ip(src[0])
        conn = Conn("outbound", "passthrough", src[0], src[1], dst[0], dst[1], time.time(), trio.current_time(), src=w)
        if agent.identities is not None and w is not None:
            conn.src_principal = w.spiffe_id(agent.config.identity.trust_domain)
        self._pending[cid] = _Pending(conn, plans)
        self._try_next(cid)

    def _try_next(self, cid: int) -> None:
        """Carry out the next route of the plan, or refuse when none is left."""
        agent, st = self.agent, self._pending[cid]
        conn = st.conn
        refused = False
        while st.next < len(st.plans):
            p = st.plans[st.next]
            st.next += 1
            if isinstance(p, plan.HttpRouted):
                return self._http_routed(cid, conn, p)
            if isinstance(p, plan.Refuse):
                if p.flag is not None:
                    traffic_path.refused(agent, conn, p)
                else:
                    conn.verdict, conn.reason = "deny", p.reason
                refused = True
                break
            st.route = p
            conn.mode, conn.dst_ip, conn.dst_port, conn.dst = p.kind, p.dst_ip, p.dst_port, p.dst
            conn.service = p.service  # the VIP's service, for the metrics' destination_service
            td = agent.config.identity.trust_domain
            if p.dst is not None:
                conn.dst_principal = p.dst.spiffe_id(td)
            observe = p.kind == "tunnel" and not st.leg and http_reporters(agent, conn)
            if observe and not self._observe_in_core(cid, conn):
                return self._report_source(cid, st)
            traffic_path.attempt(agent, conn, p)
            if p.kind == "tunnel":
                # one pod, nothing chosen per connection: the core may answer its repeats
                single = (self._remembering and not observe and not st.leg and len(st.plans) == 1
                          and p.service is None and p.cluster is None)
                if self._tunnel_command(cid, conn, p, single):
                    return
                if observe:
                    self._unobserve(cid)
                traffic_path.failed(agent, conn, p, denied=False)
                continue
            if p.kind == "local":
                conn.enforced_here = True
                police = enforce.inspect_http(agent, conn)
                if not police and enforce.decide(agent, conn).verdict == "deny":
                    traffic_path.failed(agent, conn, p, denied=True)
                    break
                reporters = http_reporters(agent, conn)
                if police or reporters:
                    self._to_http(cid, conn, (p.dst_ip, p.dst_port), conn.src_ip, False, police, reporters)
                    return
            self._established(cid, conn)
            self.core.connect(cid, p.dst_ip, p.dst_port, conn.src_ip)
            return
        if conn.verdict != "deny":
            conn.verdict, conn.reason = "allow", conn.reason or "upstream_failed"
            if not refused:
                traffic_path.exhausted(conn, attempts=st.next)
        self._refuse(cid, conn)

    def _tunnel_command(self, cid: int, conn: Conn, p: plan.Route, single: bool = False) -> bool:
        from agent.proxy.connect import authority, new_traceparent

        agent = self.agent
        if agent.identities is None or conn.src is None or p.dst is None:
            conn.reason = "no_identity" if p.dst is not None else "unknown_destination"
            return False
        # the two workloads' IDs, SNI and baggage, derived once per pair (tunnel_head.py)
        head = self._heads.get(conn.src, p.dst, agent.config.identity.trust_domain, agent.config.cluster.name)
        svid = agent.identities.get(*conn.src.identity_key)
        if svid is None:
            conn.reason = "no_identity"
            return False
        if self.ids.pushed(head.src_id) is not svid:
            self.sync_identities()
        traceparent, trace_id = new_traceparent()
        conn.set_trace(trace_id, traceparent[36:52])
        headers = [("forwarded", f'for="{authority(conn.src_ip, conn.src_port)}"'), ("traceparent", traceparent)]
        st = self._pending[cid]
        protocol = st.protocol = self._protocol_for(p.node_address)
        remember = None
        if single and p.node_address not in self._connect_only:
            remember = (self._repeat.generation, self._repeat.reserve())
            self._stash = (remember[1], conn, p, st)
        self._established(cid, conn)
        if protocol == "hbone":
            # to the destination pod's :15008, from the source pod's address (ztunnel's
            # source of truth for the client address); the SNI is not sent
            headers.append(("baggage", head.baggage))
            self.core.tunnel(cid, p.dst_ip, agent.config.ports.tunnel, head.src_id, head.dst_id, head.sni,
                             authority(p.dst_ip, p.dst_port), headers, protocol="hbone", bind=conn.src_ip,
                             remember=remember)
        else:
            self.core.tunnel(cid, p.node_address, agent.config.ports.tunnel, head.src_id, head.dst_id, head.sni,
                             authority(p.dst_ip, p.dst_port), headers, remember=remember)
        return True

    def _protocol_for(self, node_address: str) -> str:
        protocol = self.agent.config.dataplane.tunnel_protocol
        until = self._connect_only.get(node_address)
        if protocol == "hbone" and until is not None:
            if trio.current_time() < until:
                return "connect"
            del self._connect_only[node_address]
        return protocol

    def _on_failed(self, cid: int, status: int, reason: str, policy) -> None:
        self._http.pop(cid, None)
        st = self._retry.pop(cid, None) or self._pending.get(cid)
        conn = self._live.pop(cid, None)
        if conn is not None:
            self.agent.conns.pop(conn.id)
            conn.core_id = None
        st = self._retried(st, conn)
        if st is not None:
            self._pending[cid] = st
        if st is None:  # an inbound attempt the core could not carry out (answered 502/504)
            if conn is not None:
                conn.reason = reason
                emit(self.agent, conn, time.time())
            return
        conn = st.conn
        conn.reason = reason
        if status in (401, 403):  # the peer's policy denied it (HBONE / CONNECT): no retry
            conn.verdict, conn.policy = "deny", policy
        route = st.route
        if st.protocol == "hbone" and route is not None and hbone.falls_back(status, reason):
            # no HBONE answer from the pod's :15008: its node gets CONNECT for a while
            self._connect_only[route.node_address] = trio.current_time() + hbone.FALLBACK_S
            self.decisions_changed()  # stored HBONE tunnels toward that node are dropped
            self.agent.count("tunnel_hbone_fallback")
            logger.warning("no HBONE at %s:%s (%s); CONNECT to node %s for %.0f s", route.dst_ip,
                           self.agent.config.ports.tunnel, reason, route.node_address, hbone.FALLBACK_S)
            conn.reason = ""
            st.next -= 1  # the same route again
            self._try_next(cid)
            return
        if route is not None and route.service:
            self.agent.health.mark_failed(route.dst_ip, trio.current_time())
        if route is not None:
            traffic_path.failed(self.agent, conn, route, denied=conn.verdict == "deny")
        if conn.verdict == "deny":
            self._refuse(cid, conn)
            return
        self._try_next(cid)

    def _plaintext(self, cid: int, src, dst) -> None:
        agent = self.agent
        agent.count("connections_opened_inbound_plaintext")
        conn = Conn("inbound", "plaintext", src[0], src[1], dst[0], dst[1], time.time(), trio.current_time())
        conn.enforced_here = True
        self._pending[cid] = _Pending(conn)
        p = plan.plan_inbound(dst[0], dst[1], agent.view)
        if isinstance(p, plan.Refuse):
            conn.verdict, conn.reason = "deny", p.reason
            return self._refuse(cid, conn)
        conn.dst = p.dst
        conn.dst_principal = p.dst.spiffe_id(agent.config.identity.trust_domain)
        if enforce.strict_mtls(agent, conn):
            conn.verdict, conn.reason = "deny", "mtls_strict"
            return self._refuse(cid, conn)
        police = enforce.inspect_http(agent, conn)
        if not police and enforce.decide(agent, conn).verdict == "deny":
            return self._refuse(cid, conn)
        reporters = http_reporters(agent, conn)
        if police or reporters:
            return self._to_http(cid, conn, dst, src[0], False, police, reporters)
        self._established(cid, conn)
        self.core.connect(cid, dst[0], dst[1], src[0])

    def _tunnel(self, cid: int, peer, tunnel) -> None:
        """Decide a tunnel stream; an allowed plain connect is also stored in the core
        for the flow's next connections (repeat.py)."""
        agent = self.agent
        with repeat.counting(agent) as counts:
            got = self._tunnel_decide(cid, peer, tunnel)
        if got is None:
            return
        conn, d, bind = got
        remember = None
        if self._remembering and repeat.fit(counts, d):
            _, _, forwarded, _, protocol, _ = tunnel
            e = repeat.Entry(repeat.instance(conn, conn.src_port, conn.start),
                             repeat.port_from(conn, protocol, peer, forwarded), tuple(counts),
                             (d.verdict, d.policy or "-"), self._repeat.generation)
            remember = (e.generation, self._repeat.add(e))
        self.core.connect(cid, conn.dst_ip, conn.dst_port, bind, remember=remember)

    def _tunnel_decide(self, cid: int, peer, tunnel):
        """The stream's decision, carried out unless it is an allowed plain connect: then
        (its Conn, the policy decision, the address to bind) for the caller to connect."""
        from agent.proxy.connect import traceparent_ids

        agent = self.agent
        identity, target, forwarded, traceparent, protocol, bag = tunnel
        # who the source is comes from the handshake only; the claimed address is believed
        # only when consistent with the verified peer (_tunnel_source)
        src_ip, src_port, src, bind = self._tunnel_source(identity, peer, forwarded, protocol)
        conn = Conn("inbound", "tunnel", src_ip, src_port, target[0], target[1], time.time(), trio.current_time())
        conn.enforced_here = True
        conn.src_principal = identity
        conn.src = src
        if protocol == "hbone":
            agent.count("tunnel_streams_hbone")
            if src is None:  # a peer this registry does not know: its baggage names it
                conn.src = hbone.baggage_workload(hbone.parse_baggage(bag), identity, src_ip)
        ids = traceparent_ids(traceparent) if traceparent else None
        if ids:
            conn.set_trace(*ids, parent=True)
        p = plan.plan_inbound(target[0], target[1], agent.view)
        if isinstance(p, plan.Refuse):
            conn.verdict, conn.reason = "deny", p.reason
            agent.count(f"tunnel_status_{p.status}")
            self.core.refuse(cid, p.reason, p.status)
            return
        conn.dst = p.dst
        conn.dst_principal = p.dst.spiffe_id(agent.config.identity.trust_domain)
        police = enforce.inspect_http(agent, conn)
        d = None
        if not police:
            d = enforce.decide(agent, conn)
            if d.verdict == "deny":
                status = DENIED_STATUS.get(protocol, 403)
                agent.count(f"tunnel_status_{status}")
                self.core.refuse(cid, d.reason or "denied", status, d.policy)
                emit(agent, conn, time.time())
                return
        reporters = http_reporters(agent, conn)
        if police or reporters:
            self._pending[cid] = _Pending(conn)
            return self._to_http(cid, conn, target, bind, protocol, police, reporters)
        self._established(cid, conn)
        return conn, d, bind

    def _tunnel_source(self, identity, peer, forwarded, protocol):
        """(source ip, port, workload, address the upstream leg binds). HBONE: the outer
        peer (the source pod's own address), ``forwarded`` only cross-checked; CONNECT
        on the node address: the ``forwarded`` claim when consistent with the peer node
        (forwarded.claimed_source)."""
        agent = self.agent
        td = agent.config.identity.trust_domain
        if protocol == "hbone":
            s = hbone.stream_source(agent.registry.by_ip, td, identity, peer, forwarded)
            if s.mismatch:
                agent.count("tunnel_source_mismatch")
                logger.warning(f"HBONE stream: {s.mismatch}; not believed",
                               extra={"peer": peer[0], "principal": identity, "claimed": forwarded})
            return s.ip, s.port, s.workload, s.ip
        ip, port, w = claimed_source(agent, identity, peer[0], forwarded)
        # the pod sees the original source address; without a believed one the peer is a node
        return ip, port, w, (ip if ip != peer[0] else None)

    def _on_finished(self, cid: int, sent: int, received: int, start: float, end: float, reason: str) -> None:
        self._http.pop(cid, None)
        self._pending.pop(cid, None)
        st = self._retry.pop(cid, None)
        conn = self._live.pop(cid, None)
        if conn is None:
            return
        conn.core_id = None
        route = st.route if st is not None else None
        if route is not None and route.service:
            self.agent.health.mark_ok(route.dst_ip)
        if route is not None:
            traffic_path.connected(self.agent, conn, route)
        if self.agent.conns.get(conn.id) is not None:
            # finished: it was established (opened is counted when the core lists it,
            # finish.flow, or by finish from the finished record if it ended first)
            finish(self.agent, conn, sent, received, reason, end, established=True)

    def _on_progress(self, cid: int, sent: int, received: int) -> None:
        conn = self._live.get(cid)
        if conn is not None:
            conn.bytes_sent, conn.bytes_received = sent, received

    # ---- helpers -----------------------------------------------------------------
    def _established(self, cid: int, conn: Conn) -> None:
        st = self._pending.pop(cid, None)
        if st is not None:
            self._retry[cid] = st  # kept: a failed attempt goes on with the next route
        self.agent.count("connections_established")
        self._track(cid, conn)

    def _track(self, cid: int, conn: Conn) -> None:
        self.agent.conns.add(conn)
        self._live[cid] = conn
        conn.core_id = cid

    def _refuse(self, cid: int, conn: Conn) -> None:
        self._pending.pop(cid, None)
        self.core.refuse(cid, conn.reason or "refused", 503)
        self.agent.count("connections_refused")
        self.agent.count(f"refused_{reason_token(conn.reason)}")
        emit(self.agent, conn, time.time())


@asynccontextmanager
async def open_native(agent, socks: list[tuple[socket.socket, str]]) -> AsyncIterator[NativeEngine]:
    """The core for the lifetime of the block, accepting on ``socks`` ((listener, kind))."""
    dp, ident = agent.config.dataplane, agent.config.identity
    core = dataplane.Core(threads=dp.threads, connect_timeout_s=dp.connect_timeout_s,
                          handshake_timeout_s=ident.handshake_timeout_s, idle_timeout_s=dp.idle_timeout_s,
                          max_connections=dp.max_connections)
    try:
        async with trio.open_nursery() as nursery:
            eng = NativeEngine(agent, core, nursery)
            eng.sync_identities()
            eng._follow_policies()
            for s, kind in socks:
                core.listen(s.fileno(), kind)
            # the loopback listener of open_leg (HTTP routes' upstream attempts)
            leg = make_listener("127.0.0.1", 0, transparent=False, reuseport=False)
            try:
                core.listen(leg.fileno(), "outbound")
                eng._leg_addr = leg.getsockname()
            finally:
                leg.close()
            nursery.start_soon(eng.run)
            nursery.start_soon(eng._sync_loop)
            try:
                yield eng
            finally:
                eng._follow_policies(False)
                eng.take_records()  # what the core still holds is recorded before it stops
                nursery.cancel_scope.cancel()
    finally:
        core.shutdown()
