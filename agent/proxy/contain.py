"""The wall around every per-connection task: whatever one connection raises ends that
connection only, never its listener, the nursery it runs in, or the agent.

``contained`` runs a handler; an exception escaping it is logged once with the
connection's identity (the ``Conn`` the handler published with ``publish``, else the
peer address), counted as ``connection_errors`` and ``connection_errors_<Reason>``
(/v1/stats counters, /metrics ``hostmesh_events_total``), the connection's sockets are
reset and its record finished. Cancellation (drain, shutdown) passes through untouched.
It decides nothing about policy.
"""

from __future__ import annotations

import contextvars
import logging
import socket

from agent.proxy import aio

logger = logging.getLogger("hostmesh.conn")
_current: contextvars.ContextVar = contextvars.ContextVar("hostmesh_conn", default=None)


def publish(conn) -> None:
    """The handler running in this task now works for ``conn`` (its identity for the
    failure log). trio gives each task its own context, so this never leaks across."""
    _current.set(conn)


def reason_of(e: BaseException) -> str:
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return type(e).__name__


def count_failure(agent, reason: str) -> None:
    agent.count("connection_errors")
    agent.count(f"connection_errors_{reason}")


async def contained(agent, sock: socket.socket | None, fn, *args) -> None:
    _current.set(None)
    try:
        await fn(*args)
    except* Exception as eg:
        _failed(agent, sock, eg)


def _failed(agent, sock, eg: BaseExceptionGroup) -> None:
    reason = reason_of(eg)
    count_failure(agent, reason)
    conn = _current.get()
    if conn is not None:
        who = {"conn": conn.id, "mode": conn.mode, "src": f"{conn.src_ip}:{conn.src_port}",
               "dst": f"{conn.dst_ip}:{conn.dst_port}", "principal": conn.src_principal}
    else:
        who = {"peer": _peer(sock)}
    error = eg.exceptions[0] if len(eg.exceptions) == 1 else eg
    logger.error("connection task failed; this connection only is closed",
                 extra={**who, "reason": reason}, exc_info=error)
    if sock is not None:
        aio.reset(sock)
    if conn is not None and agent.conns.get(conn.id) is conn:
        from agent.proxy.finish import finish

        conn.close_reason = conn.close_reason or f"error: {reason}"
        finish(agent, conn, conn.bytes_sent, conn.bytes_received, conn.close_reason)


def _peer(sock) -> str:
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except (OSError, AttributeError, ValueError):
        return "?"
