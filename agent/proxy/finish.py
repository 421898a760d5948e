"""Turning a finished connection into its telemetry: one record per connection per
reporting side (SPEC.md's JSON schema), and the counters behind /v1/stats."""

from __future__ import annotations

import logging
import time
from typing import Any

from agent.proxy.conns import Conn

logger = logging.getLogger("hostmesh.conn")


def finish(agent, conn: Conn, sent: int, received: int, close_reason: str | None, end: float | None = None) -> None:
    """Record ``conn`` as finished with the byte counts the data path measured."""
    agent.conns.pop(conn.id)
    conn.bytes_sent, conn.bytes_received = sent, received
    conn.close_reason = conn.close_reason or close_reason
    if conn.cluster is not None:
        from agent.proxy.traffic_path import released

        released(agent, conn)
    agent.count("connections_closed")
    agent.count("bytes_sent", sent)
    agent.count("bytes_received", received)
    emit(agent, conn, end if end is not None else time.time())


def emit(agent, conn: Conn, end: float) -> None:
    """Submit the record(s): a local same-node connection reports as both ends."""
    tel = agent.telemetry
    if tel is None:
        return
    directions = ["outbound", "inbound"] if conn.mode == "local" and conn.direction == "outbound" else [conn.direction]
    for direction in directions:
        tel.submit(record(agent, conn, direction, end))


def record(agent, conn: Conn, direction: str, end: float) -> Any:
    from agent.telemetry.record import ConnRecord, Endpoint

    def endpoint(ip, port, w, principal):
        return Endpoint(ip=ip, port=port, workload=w.name if w else None,
                        namespace=w.namespace if w else None, principal=principal)

    return ConnRecord(
        start=conn.start,
        end=end,
        node=agent.config.node.name,
        direction=direction,
        mode=conn.mode,
        src=endpoint(conn.src_ip, conn.src_port, conn.src, conn.src_principal),
        dst=endpoint(conn.dst_ip, conn.dst_port, conn.dst, conn.dst_principal),
        bytes_sent=conn.bytes_sent,
        bytes_received=conn.bytes_received,
        verdict=conn.verdict,
        policy=conn.policy,
        reason=conn.close_reason or conn.reason or None,
        response_flags=conn.response_flags,
        trace_id=conn.trace_id,
        span_id=conn.span_id if direction == "outbound" else None,
        parent_span_id=conn.parent_span_id if direction == "inbound" else None,
    )
