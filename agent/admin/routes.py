"""The admin API's routing table (SPEC.md): method + path -> handler name and path
parameters, or the status an unknown path (404) or wrong method (405) gets. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass

ROUTES: list[tuple[str, re.Pattern, str]] = [
    ("GET", re.compile(r"^/v1/status$"), "status"),
    ("GET", re.compile(r"^/v1/workloads$"), "list_workloads"),
    ("POST", re.compile(r"^/v1/workloads$"), "add_workload"),
    ("DELETE", re.compile(r"^/v1/workloads/(?P<uid>[^/]+(?:/[^/]+)?)$"), "remove_workload"),
    ("GET", re.compile(r"^/v1/policies$"), "list_policies"),
    ("PUT", re.compile(r"^/v1/policies$"), "apply_policies"),
    ("DELETE", re.compile(r"^/v1/policies/(?P<namespace>[^/]+)/(?P<name>[^/]+)$"), "delete_policy"),
    ("GET", re.compile(r"^/v1/certs$"), "certs"),
    ("GET", re.compile(r"^/v1/connections$"), "connections"),
    ("GET", re.compile(r"^/v1/stats$"), "stats"),
    ("PUT", re.compile(r"^/v1/logging$"), "set_log_level"),
    ("POST", re.compile(r"^/v1/reload$"), "reload"),
    ("POST", re.compile(r"^/v1/drain$"), "drain"),
    ("GET", re.compile(r"^/v1/config_dump$"), "config_dump"),
    # traffic rules in force, clusters and ejected endpoints (docs/traffic.md)
    ("GET", re.compile(r"^/v1/traffic$"), "traffic_dump"),
]


@dataclass(frozen=True)
class Match:
    handler: str | None
    params: dict
    status: int = 200
    allow: tuple[str, ...] = ()


def route(method: str, path: str) -> Match:
    allowed = []
    for m, pattern, name in ROUTES:
        hit = pattern.match(path)
        if hit:
            if m == method:
                return Match(name, hit.groupdict())
            allowed.append(m)
    if allowed:
        return Match(None, {}, 405, tuple(sorted(set(allowed))))
    return Match(None, {}, 404)
