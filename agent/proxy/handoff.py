"""Where a set-up connection leaves trio: onto the socket layer, or — when its requests
must be checked one by one — into the HTTP inspector. Also the one way a refused
connection is closed and recorded."""

from __future__ import annotations

import socket
import time

from agent.proxy import aio, enforce
from agent.proxy.conns import Conn, next_id
from agent.proxy.contain import count_failure
from agent.proxy.finish import emit, finish


async def hand_off(agent, conn: Conn, a: socket.socket, b: socket.socket, *, to_a: bytes = b"", to_b: bytes = b"",
                   a_framing=None, b_framing=None) -> None:
    """``a`` is the source side, ``b`` the destination side; to_a/to_b are bytes already
    read that must be delivered first (e.g. what followed a CONNECT head); a_framing /
    b_framing: the ``frames.Framing`` of a leg carrying a reusable stream. When the
    stream ends cleanly the socket layer hands that leg to ``agent.reuse_callbacks``."""
    agent.conns.add(conn)
    agent.count("connections_established")
    if conn.enforced_here and enforce.inspect_http(agent, conn):
        from agent.proxy.l7 import relay_http

        if a_framing is not None:
            # the inspector reads plain bytes: the socket layer unframes the stream into
            # one end of a socket pair and the inspector works on the other
            outer, inner = socket.socketpair()
            inner.setblocking(False)
            stream_id = next_id()
            reuse_to = agent.reuse_callbacks.pop(conn.id, None)
            if reuse_to is not None:
                agent.reuse_callbacks[stream_id] = reuse_to
            agent.engine.add(a, outer, conn_id=stream_id, tag="stream", a_framing=a_framing)
            a = inner
        sent, received, reason = await relay_http(agent, conn, a, b, to_a=to_a, to_b=to_b)
        finish(agent, conn, sent, received, reason)
        return
    conn.in_engine = True
    agent.engine.add(a, b, to_a=to_a, to_b=to_b, conn_id=conn.id, tag=conn.mode, a_framing=a_framing,
                     b_framing=b_framing)


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
