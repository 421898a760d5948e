"""The data path's side of the traffic rules (agent.traffic): counting and reporting.

The planner decides; this module only tells it what happened to each attempt, from the
outbound path: an attempt holds one live connection of its cluster and endpoint until
it fails or the connection finishes; a connect failure or an upstream 502/503/504 from
the peer agent goes to the outlier detector (an ejection is logged and counted), a
connect success too (it resets the counters, as Envoy's TCP proxy does). It also sets
the Envoy response flags on the record: ``UO``, ``NR``, ``UH`` for refusals, ``UF``
(``UF,URX`` after connect retries) when every attempt failed. Never blocks, never decides.
"""

from __future__ import annotations

import logging

import trio

from agent.proxy.conns import Conn

logger = logging.getLogger("hostmesh.traffic")
FLAG_REASONS = {"UO": "upstream_overflow", "NR": "no_route", "UH": "no_healthy_upstream"}


def refused(agent, conn: Conn, p) -> None:
    conn.verdict, conn.response_flags = "allow", p.flag
    conn.reason = f"{FLAG_REASONS.get(p.flag, 'refused')}: {p.reason}"
    agent.count(f"traffic_{FLAG_REASONS.get(p.flag, 'refused')}")


def attempt(agent, conn: Conn, p) -> None:
    if p.cluster is None:
        return
    conn.cluster = p.cluster
    agent.health.traffic.acquire(p.cluster, p.dst_ip)


def connected(agent, conn: Conn, p) -> None:
    if p.cluster is not None:
        agent.health.traffic.report(p.cluster, p.dst_ip, "success", trio.current_time())


def failed(agent, conn: Conn, p, *, denied: bool) -> None:
    if p.cluster is None:
        return
    agent.health.traffic.release(p.cluster, p.dst_ip)
    conn.cluster = None
    if denied:
        return  # a policy refusal says nothing about the endpoint's health
    agent.count("traffic_connect_failures")
    _report(agent, p.cluster, p.dst_ip, "connect_failure")


def outcome(agent, p, result: str | int) -> None:
    """An HTTP attempt's outcome (a status, ``reset`` or ``timeout``) for the outlier detector."""
    if p.cluster is not None:
        _report(agent, p.cluster, p.dst_ip, result)


def exhausted(conn: Conn, attempts: int) -> None:
    if conn.response_flags is None:
        conn.response_flags = "UF,URX" if attempts > 1 else "UF"


def released(agent, conn: Conn) -> None:
    """The connection finished: its count is given back. One the upstream reset before
    sending a byte back counts as a local-origin failure (``reset``) for the detector, and so does
    one whose HBONE connection was lost under it (``tunnel_lost``: the core resets such a stream)."""
    cluster, conn.cluster = conn.cluster, None
    agent.health.traffic.release(cluster, conn.dst_ip)
    if (conn.close_reason or "").startswith(("reset", "tunnel_lost")) and conn.bytes_received == 0:
        agent.count("traffic_upstream_resets")
        _report(agent, cluster, conn.dst_ip, "reset")


def _report(agent, cluster: str, ep: str, result: str | int) -> None:
    ej = agent.health.traffic.report(cluster, ep, result, trio.current_time())
    if ej is not None:
        agent.count("traffic_ejections")
        logger.warning("endpoint ejected", extra={"cluster": cluster, "endpoint": ej.endpoint, "reason": ej.reason,
                                                  "times_ejected": ej.times})


def gauges(agent, metrics) -> None:
    """``hostmesh_endpoint_ejected`` and ``hostmesh_endpoint_connections`` as of now."""
    state, now = agent.health.traffic, trio.current_time()
    ejected = {(e["cluster"], e["endpoint"]): e["reason"] for e in state.ejected(now)}
    rows_e, rows_c = {}, {}
    for name, c in state.clusters.items():
        for ep in c.endpoints:
            rows_e[(name, ep, ejected.get((name, ep), ""))] = 1 if (name, ep) in ejected else 0
            rows_c[(name, ep)] = state.active.get(ep, 0)
    metrics.gauges["hostmesh_endpoint_ejected"] = rows_e
    metrics.gauges["hostmesh_endpoint_connections"] = rows_c
