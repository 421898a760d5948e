"""Turning a connection into its telemetry: opened when it got through (counters move at
once, as ztunnel's do), its bytes as they flow (``flow``, every telemetry tick), and one
record per finished connection per reporting side (SPEC.md's JSON schema), plus the
counters behind /v1/stats. The label derivation itself is agent.telemetry.istio's."""

from __future__ import annotations

import logging
import time
from typing import Any

from agent.proxy.conns import Conn

logger = logging.getLogger("hostmesh.conn")


def finish(agent, conn: Conn, sent: int, received: int, close_reason: str | None, end: float | None = None,
           established: bool = False) -> None:
    """Record ``conn`` as finished with the byte counts the data path measured.
    ``established``: it got through, so a reporter ``opened`` has not counted yet (it
    ended before a telemetry tick saw it) is opened now, from the finished record itself."""
    agent.conns.pop(conn.id)
    conn.bytes_sent, conn.bytes_received = sent, received
    conn.close_reason = conn.close_reason or close_reason
    if conn.cluster is not None:
        from agent.proxy.traffic_path import released

        released(agent, conn)
    agent.count("connections_closed")
    agent.count("bytes_sent", sent)
    agent.count("bytes_received", received)
    emit(agent, conn, end if end is not None else time.time(), established)


def directions(conn: Conn) -> list[str]:
    """The reporters of a connection: a local same-node one reports as both ends."""
    return ["outbound", "inbound"] if conn.mode == "local" and conn.direction == "outbound" else [conn.direction]


def opened(agent, conn: Conn) -> None:
    """The connection got through: istio_tcp_connections_opened_total moves now."""
    tel = agent.telemetry
    if tel is None:
        return
    # one TcpAccount per reporter, in directions() order (a connection's mode and
    # direction no longer change once it got through): no list or pair per connection
    conn.accounts = tuple(tel.opened(record(agent, conn, d, conn.start)) for d in directions(conn))


def emit(agent, conn: Conn, end: float, established: bool = False) -> None:
    """Submit the record(s), closing what ``opened`` counted. ``established`` and not yet
    opened: opened with the same record first (its labels are the opening record's: only
    the end, bytes and reason differ, and none of them is a label), so a short connection
    costs one record per reporter, not two."""
    tel = agent.telemetry
    if tel is None:
        return
    accounts, conn.accounts = conn.accounts, ()
    for i, direction in enumerate(directions(conn)):
        rec = record(agent, conn, direction, end)
        acct = accounts[i] if i < len(accounts) else None
        if acct is None and established:
            acct = tel.opened(rec)
        tel.submit(rec, acct)


def flow(agent) -> None:
    """Bytes of live connections into the counters (a long-lived connection shows its
    traffic while it lasts, not only when it ends)."""
    tel = agent.telemetry
    if tel is None or not len(agent.conns):
        return
    listed = set()  # ids of the relayed-by-Python ones the core lists (few)
    for c, up, down in agent.engine.live_counts() if agent.engine is not None else ():
        if agent.conns.get(c.id) is not c:  # finished or handed on (http_route) meanwhile
            continue
        if not c.accounts:
            # the native core lists only bridged connections: this one got through (its
            # tunnel or connect succeeded), so istio_tcp_connections_opened_total moves now
            opened(agent, c)
        if c.live is not None:
            listed.add(c.id)
            up, down = c.live
        for acct in c.accounts:
            tel.flow(acct, up, down)
    for c in agent.conns:  # relayed outside the core (the HTTP inspector): its own counts
        if c.live is not None and c.accounts and c.id not in listed:
            up, down = c.live
            for acct in c.accounts:
                tel.flow(acct, up, down)


def service_of(agent, conn: Conn, direction: str):
    """The service for the labels: the VIP the client dialled (known at the source),
    else the one the destination workload serves on this port (ztunnel's guess at the
    destination), else None."""
    from agent.telemetry.istio import service_index, service_ref

    domain = agent.config.cluster.domain
    if conn.service:
        ns, name = conn.service.split("/", 1)
        return service_ref(name, ns, domain)
    if direction == "outbound":
        return None
    services = agent.view.services
    cached = getattr(agent, "_service_index", None)
    if cached is None or cached[0] is not services:
        cached = (services, service_index(services, domain))
        agent._service_index = cached
    return cached[1].get((conn.dst_ip, conn.dst_port))


def endpoint(ip: str, port: int, w, principal: str | None):
    from agent.telemetry.record import Endpoint

    if w is None:
        return Endpoint(ip=ip, port=port, principal=principal)
    return Endpoint(ip=ip, port=port, workload=w.name, namespace=w.namespace, principal=principal, labels=w.labels,
                    node=w.node)


def record(agent, conn: Conn, direction: str, end: float) -> Any:
    from agent.telemetry.record import ConnRecord

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
        service=service_of(agent, conn, direction),
    )


def reason_token(reason: str) -> str:
    """A counter-name part from a reason: ``"no ALLOW policy matched"`` -> ``no_allow_policy_matched``,
    ``"connect_failed: Connection refused"`` -> ``connect_failed`` (no spaces in /metrics labels)."""
    head = reason.split(":")[0].lower()
    return "_".join("".join(ch if ch.isalnum() else " " for ch in head).split()) or "unknown"
