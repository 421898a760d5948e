"""Readiness (:15021 ``/healthz/ready``) and Prometheus (:15020 ``/metrics``).

Ready means: capture installed, identities loaded, every listener accepting (the serve
order guarantees it), not draining, and no policy source rejected (agent.policy_sources)
— then 200, else 503 with the reason, as Kubernetes probes and
ztunnel's readiness expect. The HTTP plumbing is the admin module's h11 server.
"""

from __future__ import annotations

import os

import trio

from agent.admin.http import Response, serve_tcp


def readiness(agent, path: str) -> tuple[int, bytes]:
    if path in ("/healthz/ready", "/ready"):
        if _ready(agent):
            return 200, b"ready\n"
        why = agent.not_ready_reason() if hasattr(agent, "not_ready_reason") else (
            "draining" if agent.draining else "starting")
        return 503, why.encode() + b"\n"
    if path in ("/healthz/live", "/live"):
        return 200, b"live\n"
    return 404, b"not found\n"


def _ready(agent) -> bool:
    """Agent.is_ready (started, not draining, no rejected policy source); plain
    ``ready``/``draining`` flags for anything agent-like that lacks it."""
    return agent.is_ready() if hasattr(agent, "is_ready") else bool(agent.ready and not agent.draining)


def metrics_text(agent) -> bytes:
    parts = []
    registry = agent.metrics_registry()
    if registry is not None:
        parts.append(registry.render())
    parts.append(_agent_gauges(agent))
    parts.append(_workload_gauges(agent))
    from agent.telemetry.process import render

    parts.append(render([os.getpid()]))
    return "".join(parts).encode()


def _workload_gauges(agent) -> str:
    """ztunnel's workload manager gauges: local workloads the agent proxies (enrolled,
    with a certificate) and those still waiting for their certificate."""
    local = agent.registry.local()
    waiting = 0
    if agent.identities is not None and local:
        ready = {row["identity"] for row in agent.identities.status() if row["state"] == "available"}
        td = agent.config.identity.trust_domain
        waiting = sum(1 for w in local if w.spiffe_id(td) not in ready)
    return "\n".join([
        "# HELP workload_manager_active_proxy_count The current number of workloads the node proxy serves.",
        "# TYPE workload_manager_active_proxy_count gauge",
        f"workload_manager_active_proxy_count {len(local) - waiting}",
        "# HELP workload_manager_pending_proxy_count Workloads waiting for their certificate.",
        "# TYPE workload_manager_pending_proxy_count gauge",
        f"workload_manager_pending_proxy_count {waiting}",
    ]) + "\n"


def _agent_gauges(agent) -> str:
    lines = [
        "# HELP hostmesh_connections_active Connections carried right now.",
        "# TYPE hostmesh_connections_active gauge",
        f"hostmesh_connections_active {agent.active_connections()}",
        "# HELP hostmesh_workloads Workloads in the registry.",
        "# TYPE hostmesh_workloads gauge",
        f"hostmesh_workloads {len(agent.registry)}",
        "# HELP hostmesh_ready 1 when the agent reports ready.",
        "# TYPE hostmesh_ready gauge",
        f"hostmesh_ready {int(_ready(agent))}",
        "# HELP hostmesh_events_total Agent events by name (refusals, handshakes, decisions).",
        "# TYPE hostmesh_events_total counter",
    ]
    for k, v in sorted(agent.event_counters().items()):
        lines.append(f'hostmesh_events_total{{event="{k}"}} {v}')
    return "\n".join(lines) + "\n"


async def serve_readiness(agent, task_status=trio.TASK_STATUS_IGNORED) -> None:
    p = agent.config.ports

    async def handler(req):
        status, body = readiness(agent, req.path)
        return Response(status, [("content-type", "text/plain")], body)

    await serve_tcp(p.readiness_bind, p.readiness, handler, task_status=task_status)


async def serve_metrics(agent, task_status=trio.TASK_STATUS_IGNORED) -> None:
    p = agent.config.ports

    async def handler(req):
        if req.path != "/metrics":
            return Response(404, [("content-type", "text/plain")], b"not found\n")
        return Response(200, [("content-type", "text/plain; version=0.0.4")], metrics_text(agent))

    await serve_tcp(p.metrics_bind, p.metrics, handler, task_status=task_status)
