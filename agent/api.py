"""What the admin API asks of a running agent: the facade ``agent.app.Agent`` implements.

The admin server (agent/admin) depends only on this protocol, so it is tested against a
fake and never reaches into the data plane. Methods return JSON-able values and raise
``agent.errors.ApiError`` for outcomes such as 400/404.
"""

from __future__ import annotations

from typing import Any, Protocol


class AgentAPI(Protocol):
    def status(self) -> dict[str, Any]:
        """GET /v1/status: node, version, uptime_s, ready, draining, workers, counts."""

    def list_workloads(self) -> list[dict[str, Any]]:
        """GET /v1/workloads."""

    def add_workload(self, body: Any) -> dict[str, Any]:
        """POST /v1/workloads: validate, enrol capture, prepare identity. 400 on bad body."""

    def remove_workload(self, uid: str) -> dict[str, Any]:
        """DELETE /v1/workloads/{uid}: close its connections, un-enrol. 404 if unknown."""

    def list_policies(self) -> list[dict[str, Any]]:
        """GET /v1/policies."""

    def apply_policies(self, text: str, source: str) -> dict[str, Any]:
        """PUT /v1/policies (YAML or JSON text). 400 with ``path:line: message`` lines."""

    def delete_policy(self, namespace: str, name: str) -> dict[str, Any]:
        """DELETE /v1/policies/{namespace}/{name}. 404 if unknown."""

    def certs(self) -> list[dict[str, Any]]:
        """GET /v1/certs: identity, serial, not_before, not_after, issuer, state."""

    def connections(self) -> list[dict[str, Any]]:
        """GET /v1/connections: id, src/dst (ip, port, workload, identity), bytes, age_s."""

    def stats(self) -> dict[str, Any]:
        """GET /v1/stats: counters and gauges."""

    def set_log_level(self, level: str) -> dict[str, Any]:
        """PUT /v1/logging?level=...; 400 on an unknown level."""

    async def reload(self) -> dict[str, Any]:
        """POST /v1/reload: re-read config file and policy directory."""

    async def drain(self) -> dict[str, Any]:
        """POST /v1/drain: stop accepting, readiness 503, drain until the deadline."""

    def traffic_dump(self) -> dict[str, Any]:
        """GET /v1/traffic: DestinationRules/VirtualServices in force, clusters, ejected endpoints."""

    def config_dump(self) -> dict[str, Any]:
        """GET /v1/config_dump: everything above in one document."""
