"""Where a set-up connection leaves trio: onto the socket layer, or — when its requests
must be checked one by one — into the HTTP inspector. Also the one way a refused
connection is closed and recorded."""

from __future__ import annotations

import socket
import time

from agent.proxy import aio, enforce
from agent.proxy.conns import Conn
from agent.proxy.finish import emit, finish


async def hand_off(agent, conn: Conn, a: socket.socket, b: socket.socket, *, to_a: bytes = b"", to_b: bytes = b"") -> None:
    """``a`` is the source side, ``b`` the destination side; to_a/to_b are bytes already
    read that must be delivered first (e.g. what followed a CONNECT head)."""
    agent.conns.add(conn)
    agent.count("connections_established")
    if conn.enforced_here and enforce.inspect_http(agent, conn):
        from agent.proxy.l7 import relay_http

        sent, received, reason = await relay_http(agent, conn, a, b, to_a=to_a, to_b=to_b)
        finish(agent, conn, sent, received, reason)
        return
    conn.in_engine = True
    agent.engine.add(a, b, to_a=to_a, to_b=to_b, conn_id=conn.id, tag=conn.mode)


def on_engine_finished(agent, fc) -> None:
    """The socket layer reports a finished connection (called in the trio thread)."""
    conn = agent.conns.get(fc.conn_id)
    if conn is None:
        return
    finish(agent, conn, fc.bytes_a_to_b, fc.bytes_b_to_a, fc.close_reason)


def record_refusal(agent, conn: Conn, sock: socket.socket) -> None:
    """Refuse the client at once with a reset, and record why."""
    aio.reset(sock)
    agent.count("connections_refused")
    agent.count(f"refused_{conn.reason.split(':')[0] or 'unknown'}")
    emit(agent, conn, time.time())
