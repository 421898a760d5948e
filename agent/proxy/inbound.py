"""Connections arriving at this node for one of its pods.

Two doors: the mTLS tunnel listener on :15008 (the peer proves a SPIFFE identity, then
asks with CONNECT) and plaintext capture on :15006 (clients outside the mesh; refused
when PeerAuthentication says STRICT). Either way the decision is made here, at the
destination, and the pod sees the original source IP.
"""

from __future__ import annotations

import logging
import socket
import time

import trio

from agent.proxy import aio, enforce, plan
from agent.proxy.conns import Conn
from agent.proxy.contain import publish
from agent.proxy.handoff import hand_off, record_refusal
from agent.proxy.sockets import captured_ends, connect

logger = logging.getLogger("hostmesh.inbound")


async def handle_plaintext(agent, sock: socket.socket) -> None:
    ends = captured_ends(sock)
    if ends is None:
        return
    src_ip, src_port, dst_ip, dst_port = ends
    agent.count("connections_opened_inbound_plaintext")
    conn = Conn("inbound", "plaintext", src_ip, src_port, dst_ip, dst_port, time.time(), trio.current_time())
    publish(conn)
    conn.enforced_here = True
    p = plan.plan_inbound(dst_ip, dst_port, agent.view)
    if isinstance(p, plan.Refuse):
        conn.verdict, conn.reason = "deny", p.reason
        record_refusal(agent, conn, sock)
        return
    conn.dst = p.dst
    conn.dst_principal = p.dst.spiffe_id(agent.config.identity.trust_domain)
    if enforce.strict_mtls(agent, conn):
        conn.verdict, conn.reason = "deny", "mtls_strict"
        record_refusal(agent, conn, sock)
        return
    if not enforce.inspect_http(agent, conn) and enforce.decide(agent, conn).verdict == "deny":
        record_refusal(agent, conn, sock)
        return
    try:
        upstream = await connect((dst_ip, dst_port), bind_src=src_ip,
                                 timeout=agent.config.dataplane.connect_timeout_s)
    except (OSError, trio.TooSlowError) as e:
        conn.reason = f"upstream_failed: {e}"
        record_refusal(agent, conn, sock)
        return
    await hand_off(agent, conn, sock, upstream)


# A TLS connection that carried a stream waits this long for the next request, then is
# closed (the client stops reusing one after tunnel_client.WARM_MAX_AGE_S, well before).
STREAM_IDLE_S = 60.0


async def handle_tunnel(agent, raw: socket.socket) -> None:
    """mTLS handshake (server presents the destination SVID chosen by SNI), then the
    first CONNECT; with ALPN hostmesh-streams/1 the connection then carries one framed
    stream after another."""
    from agent.identity.tls import tls_handshake_server

    try:
        src_node = raw.getpeername()[0]
    except OSError:
        aio.close(raw)
        return
    cfg = agent.config
    if agent.identities is None:
        aio.reset(raw)
        return
    try:
        tls, verdict = await tls_handshake_server(raw, agent.identities.server_context(),
                                                  cfg.identity.handshake_timeout_s, cfg.identity.trust_domain)
    except (OSError, ValueError) as e:
        agent.count("tunnel_handshake_failures")
        logger.info("tunnel handshake failed", extra={"peer": src_node, "error": str(e)})
        aio.close(raw)
        return
    if not verdict.ok:
        agent.count(f"peer_rejected_{verdict.reason}")
        logger.warning("peer rejected", extra={"peer": src_node, "reason": verdict.reason})
        aio.reset(raw)
        aio.close(tls)
        return
    from agent.proxy.connect import streams_negotiated

    streams = streams_negotiated(tls, agent.identities.alpn)
    await _serve_request(agent, tls, verdict, src_node, streams, carry=None)


def claimed_source(agent, spiffe_id: str | None, src_node: str, forwarded) -> tuple[str, int, object]:
    """The source address to use, from the peer's ``Forwarded`` claim, and the workload
    it names — only when the claim is consistent with the verified peer. Not believed
    (counted ``tunnel_forwarded_mismatch``, the source is then the peer node itself): an
    address the registry gives to a workload of another identity or to a pod of this
    node, or one inside another node's pod CIDRs than the peer's."""
    if not forwarded:
        return src_node, 0, None
    ip, port = forwarded
    w = agent.registry.by_ip(ip)
    why = None
    if w is not None and w.spiffe_id(agent.config.identity.trust_domain) != spiffe_id:
        why = "names a workload of another identity"
    elif w is not None and w.node is None:
        why = "names a pod of this node"
    else:
        owner = w.node if w is not None else getattr(plan.peer_for(ip, agent.view.peers), "name", None)
        known = _node_addresses(agent, owner) if owner else set()
        if known and src_node not in known:
            why = f"names a pod of node {owner}, not of the peer"
    if why:
        agent.count("tunnel_forwarded_mismatch")
        logger.warning(f"Forwarded {why}; not believed",
                       extra={"peer": src_node, "principal": spiffe_id, "claimed": ip})
        return src_node, 0, None
    return ip, port, w


def _node_addresses(agent, name: str) -> set[str]:
    return {a for n in agent.config.cluster.nodes if n.name == name for a in (n.address, n.address6) if a}


def _next_stream(agent, verdict, src_node: str, reuse) -> None:
    """The socket layer ended a stream cleanly: wait for the connection's next request
    (called in the trio thread)."""
    tls, framing = reuse
    if agent.draining or agent.tunnels is None:
        aio.close(tls)
        return
    agent.tunnels.spawn(_serve_request, agent, tls, verdict, src_node, True, framing.carry)


async def _serve_request(agent, tls, verdict, src_node: str, streams: bool, carry: bytes | None) -> None:
    """Read one CONNECT on ``tls`` and carry it out: policy, upstream connect, answer,
    then the socket layer. ``carry`` None: right after the handshake (handshake
    timeout); else an idle connection that carried streams (STREAM_IDLE_S, closed on
    drain), with the bytes that followed the last stream's end."""
    from agent.proxy.connect import (
        ConnectError,
        ConnectRequestParser,
        build_response,
        traceparent_ids,
    )

    cfg = agent.config
    first = carry is None
    parser = ConnectRequestParser()
    req = parser.feed(carry) if carry else None  # the next request may already be here
    scope = trio.CancelScope(deadline=trio.current_time() + (cfg.identity.handshake_timeout_s if first
                                                              else STREAM_IDLE_S))
    agent.tunnels.idle.add(scope)
    try:
        with scope:
            while req is None:
                data = await aio.recv_some(tls)
                if not data:
                    break
                req = parser.feed(data)
    except OSError:
        req = None
    finally:
        agent.tunnels.idle.discard(scope)
    if req is None:  # closed by the peer, idle or slow, or the agent drains
        aio.close(tls)
        return
    async def answer(status: int, headers=()) -> None:
        try:
            with trio.move_on_after(2):
                await aio.send_all(tls, build_response(status, list(headers)))
        except OSError:
            pass
        aio.close(tls)

    if isinstance(req, ConnectError):
        agent.count(f"tunnel_status_{req.status}")
        await answer(req.status)
        return
    src_ip, src_port, src = claimed_source(agent, verdict.spiffe_id, src_node, req.forwarded_for)
    conn = Conn("inbound", "tunnel", src_ip, src_port, req.target_ip, req.target_port, time.time(), trio.current_time())
    publish(conn)
    conn.enforced_here = True
    # who the source is comes from the handshake only (namespace, service account);
    # the claimed address serves source.ip / ipBlocks and the pod's view (enforce.attrs)
    conn.src_principal = verdict.spiffe_id
    conn.src = src
    ids = traceparent_ids(req.traceparent) if req.traceparent else None
    if ids:
        conn.trace_id, conn.parent_span_id = ids
    p = plan.plan_inbound(req.target_ip, req.target_port, agent.view)
    from agent.proxy.finish import emit

    if isinstance(p, plan.Refuse):
        conn.verdict, conn.reason = "deny", p.reason
        await answer(p.status)
        agent.count(f"tunnel_status_{p.status}")
        emit(agent, conn, time.time())
        return
    conn.dst = p.dst
    conn.dst_principal = p.dst.spiffe_id(cfg.identity.trust_domain)
    if not enforce.inspect_http(agent, conn):
        d = enforce.decide(agent, conn)
        if d.verdict == "deny":
            agent.count("tunnel_status_403")
            await answer(403, [("x-hostmesh-policy", d.policy)] if d.policy else [])
            emit(agent, conn, time.time())
            return
    # The pod sees the original source address (Forwarded); without one the peer is
    # another node itself, whose underlay address is not ours to borrow.
    bind = src_ip if src_ip != src_node else None
    try:
        upstream = await connect((req.target_ip, req.target_port), bind_src=bind,
                                 timeout=cfg.dataplane.connect_timeout_s)
    except (OSError, trio.TooSlowError) as e:
        # the destination knows why the source's connection failed: it writes the record too
        timeout = isinstance(e, trio.TooSlowError)
        conn.reason = "upstream_failed: " + ("connect timeout" if timeout else str(e.strerror or e))
        await answer(504 if timeout else 502)
        emit(agent, conn, time.time())
        return
    try:
        await aio.send_all(tls, build_response(200, []))
    except OSError:
        aio.close(tls)
        aio.close(upstream)
        return
    if streams:
        from agent.proxy.frames import Framing

        agent.reuse_callbacks[conn.id] = lambda reuse: _next_stream(agent, verdict, src_node, reuse)
        await hand_off(agent, conn, tls, upstream, a_framing=Framing(req.leftover))
    else:
        await hand_off(agent, conn, tls, upstream, to_b=req.leftover)
