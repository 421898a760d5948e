"""Where a set-up connection leaves trio: onto the socket layer, or — when its requests
must be checked one by one — into the HTTP inspector. Also the one way a refused
connection is closed and recorded."""

from __future__ import annotations

import socket
import time

from agent.proxy import aio, enforce
from agent.proxy.conns import Conn, next_id
from agent.proxy.contain import count_failure
from agent.proxy.finish import emit, finish, opened


async def hand_off(agent, conn: Conn, a: socket.socket, b: socket.socket, *, to_a: bytes = b"", to_b: bytes = b"",
                   a_framing=None, b_framing=None) -> None:
    """``a`` is the source side, ``b`` the destination side; to_a/to_b are bytes already
    read that must be delivered first (e.g. what followed a CONNECT head); a_framing /
    b_framing: the ``frames.Framing`` of a leg carrying a reusable stream. When the
    stream ends cleanly the socket layer hands that leg to ``agent.reuse_callbacks``."""
    agent.conns.add(conn)
    agent.count("connections_established")
    opened(agent, conn)
    police = conn.enforced_here and enforce.inspect_http(agent, conn)
    reporters = http_reporters(agent, conn)
    if police or reporters:
        from agent.proxy.l7 import relay_http

        # the inspector reads plain bytes: the socket layer unframes a reusable stream
        # into one end of a socket pair and the inspector works on the other
        if a_framing is not None:
            a = _unframed(agent, conn, a, "a", a_framing)
        if b_framing is not None:
            b = _unframed(agent, conn, b, "b", b_framing)
        sent, received, reason = await relay_http(agent, conn, a, b, to_a=to_a, to_b=to_b, police=police,
                                                  reporters=reporters)
        finish(agent, conn, sent, received, reason)
        return
    conn.in_engine = True
    agent.engine.add(a, b, to_a=to_a, to_b=to_b, conn_id=conn.id, tag=conn.mode, a_framing=a_framing,
                     b_framing=b_framing)


def _unframed(agent, conn: Conn, leg: socket.socket, side: str, framing) -> socket.socket:
    outer, inner = socket.socketpair()
    inner.setblocking(False)
    stream_id = next_id()
    reuse_to = agent.reuse_callbacks.pop(conn.id, None)
    if reuse_to is not None:
        agent.reuse_callbacks[stream_id] = reuse_to
    if side == "a":
        agent.engine.add(leg, outer, conn_id=stream_id, tag="stream", a_framing=framing)
    else:
        agent.engine.add(outer, leg, conn_id=stream_id, tag="stream", b_framing=framing)
    return inner


def http_reporters(agent, conn: Conn) -> list[str]:
    """Who reports this connection's HTTP requests (``telemetry.http_metrics``): on a
    workload's HTTP port, the destination's agent and, with "both", the source's."""
    dst = conn.dst
    if agent.telemetry is None or dst is None or conn.dst_port not in dst.http_ports:
        return []
    setting = agent.config.telemetry.http_metrics
    if setting == "off":
        return []
    if not conn.enforced_here:  # the source's side of a tunnel
        return ["outbound"] if setting == "both" else []
    if conn.mode == "local" and conn.direction == "outbound" and setting == "both":
        return ["outbound", "inbound"]
    return ["inbound"]


def on_engine_finished(agent, fc) -> None:
    """The socket layer reports a finished connection (called in the trio thread)."""
    reuse_to = agent.reuse_callbacks.pop(fc.conn_id, None)
    if fc.close_reason.startswith("error: "):  # the socket layer contained a failure
        count_failure(agent, fc.close_reason[7:])
    if fc.reuse is not None:
        if reuse_to is not None:
            reuse_to(fc.reuse)
        else:
            aio.close(fc.reuse[0])
    conn = agent.conns.get(fc.conn_id)
    if conn is None:
        return
    finish(agent, conn, fc.bytes_a_to_b, fc.bytes_b_to_a, fc.close_reason)


def reason_token(reason: str) -> str:
    """A counter-name part from a reason: ``"no ALLOW policy matched"`` -> ``no_allow_policy_matched``,
    ``"connect_failed: Connection refused"`` -> ``connect_failed`` (no spaces in /metrics labels)."""
    head = reason.split(":")[0].lower()
    return "_".join("".join(ch if ch.isalnum() else " " for ch in head).split()) or "unknown"


def record_refusal(agent, conn: Conn, sock: socket.socket) -> None:
    """Refuse the client at once with a reset, and record why."""
    aio.reset(sock)
    agent.count("connections_refused")
    agent.count(f"refused_{reason_token(conn.reason)}")
    emit(agent, conn, time.time())
