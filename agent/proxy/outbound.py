"""Connections a local pod opened, captured on :15001.

Routing is decided by ``plan.plan_outbound``; this module only carries the plan out:
refuse with a reset, connect locally (same node: policy enforced here), open an mTLS
tunnel to the destination node (policy enforced there), or pass through. Once both
legs exist the connection moves to the socket layer.
"""

from __future__ import annotations

import logging
import socket
import time

import trio

from agent.proxy import enforce, plan, traffic_path
from agent.proxy.conns import Conn
from agent.proxy.contain import publish
from agent.proxy.handoff import hand_off, record_refusal
from agent.proxy.sockets import captured_ends, connect

logger = logging.getLogger("hostmesh.outbound")


async def handle_outbound(agent, sock: socket.socket) -> None:
    ends = captured_ends(sock)
    if ends is None:
        return
    src_ip, src_port, dst_ip, dst_port = ends
    agent.count("connections_opened_outbound")
    plans = plan.plan_outbound(src_ip, dst_ip, dst_port, agent.view, agent.health, trio.current_time())
    src = agent.registry.by_ip(src_ip)
    conn = Conn("outbound", "passthrough", src_ip, src_port, dst_ip, dst_port, time.time(), trio.current_time(), src=src)
    publish(conn)
    if agent.identities is not None and src is not None:
        conn.src_principal = src.spiffe_id(agent.config.identity.trust_domain)
    for i, p in enumerate(plans):
        last = i == len(plans) - 1
        if isinstance(p, plan.HttpRouted):
            from agent.proxy.http_route import serve_http_routes

            await serve_http_routes(agent, conn, sock, p)
            return
        if isinstance(p, plan.Refuse):
            if p.flag is not None:
                traffic_path.refused(agent, conn, p)
            else:
                conn.verdict, conn.reason = "deny", p.reason
            record_refusal(agent, conn, sock)
            return
        conn.mode, conn.dst_ip, conn.dst_port, conn.dst = p.kind, p.dst_ip, p.dst_port, p.dst
        conn.service = p.service  # the VIP's service, for the metrics' destination_service
        if p.dst is not None:
            conn.dst_principal = p.dst.spiffe_id(agent.config.identity.trust_domain)
        traffic_path.attempt(agent, conn, p)
        done = await carry(agent, conn, sock, p)
        if done:
            if p.service:
                agent.health.mark_ok(p.dst_ip)
            traffic_path.connected(agent, conn, p)
            return
        if p.service:
            agent.health.mark_failed(p.dst_ip, trio.current_time())
        traffic_path.failed(agent, conn, p, denied=conn.verdict == "deny")
        if last or conn.verdict == "deny":
            break
    if conn.verdict != "deny":
        conn.verdict = "allow"
        conn.reason = conn.reason or "upstream_failed"
        traffic_path.exhausted(conn, attempts=i + 1)
    record_refusal(agent, conn, sock)


async def carry(agent, conn: Conn, sock: socket.socket, p: plan.Route) -> bool:
    """Connect ``sock`` (the source side) to the route's destination and hand both legs
    to the socket layer; False (``conn.reason`` says why) when that failed."""
    try:
        if p.kind == "tunnel":
            return await _via_tunnel(agent, conn, sock, p)
        return await _direct(agent, conn, sock, p)
    except OSError as e:
        conn.reason = f"connect_failed: {e.strerror or e}"
        return False


async def _direct(agent, conn: Conn, sock: socket.socket, p: plan.Route) -> bool:
    """Same-node destination (enforced here) or passthrough; the source IP is preserved."""
    if p.kind == "local":
        conn.enforced_here = True
        if not enforce.inspect_http(agent, conn):
            d = enforce.decide(agent, conn)
            if d.verdict == "deny":
                return False
    upstream = await connect(
        (p.dst_ip, p.dst_port), bind_src=conn.src_ip,
        timeout=p.connect_timeout_s or agent.config.dataplane.connect_timeout_s,
    )
    await hand_off(agent, conn, sock, upstream)
    return True


async def _via_tunnel(agent, conn: Conn, sock: socket.socket, p: plan.Route) -> bool:
    from agent.proxy.tunnel_client import open_tunnel

    result = await open_tunnel(agent, conn, p)
    if result.status != 200:
        conn.reason = result.reason
        if result.status == 403:
            conn.verdict, conn.policy = "deny", result.policy
        return False
    t = result.tunnel
    if t.reusable:
        from agent.proxy.frames import Framing

        agent.reuse_callbacks[conn.id] = lambda _reuse: agent.tunnels.give_back(t)
        await hand_off(agent, conn, sock, t.sock, b_framing=Framing(result.leftover))
    else:
        await hand_off(agent, conn, sock, t.sock, to_a=result.leftover)
    return True
