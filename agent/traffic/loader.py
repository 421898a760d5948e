"""Traffic documents (Istio ``DestinationRule`` / ``VirtualService``) of a policy file ->
compiled rules, or ``TrafficError`` with one ``path:line: field: message`` per problem.

The door to ``agent.traffic.documents`` (the pydantic models and the compiler): a text
without a ``networking.istio.io`` document returns at once and never imports them, so an
agent without traffic rules does not hold their models (about 1 MiB of an idle agent,
docs/dataplane.md Memory). Decides nothing itself beyond that; never touches the
registry or the running state.
"""

from __future__ import annotations

import re
from typing import Any

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s))+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


class TrafficError(ValueError):
    """An invalid traffic document; str() is one ``path:line: message`` per problem."""


def duration_s(v: Any) -> float:
    """Istio (protobuf / Go) durations: ``10s``, ``1.5s``, ``100ms``, ``1m30s``."""
    if not isinstance(v, str) or not _DURATION.match(v.strip()):
        raise ValueError(f"{v!r} is not a duration (like 10s, 100ms, 1m)")
    return sum(float(n) * _UNIT[u] for n, u in _PART.findall(v.strip()))


def is_traffic(data: Any) -> bool:
    """True for a document this loader reads (the rbac loader skips these)."""
    return isinstance(data, dict) and str(data.get("apiVersion", "")).startswith("networking.istio.io/")


def load_traffic(text: str, path: str = "<policy>", domain: str = "cluster.local") -> list:
    """The traffic documents of ``text`` (others are skipped) as ``model.Loaded``, or
    TrafficError naming every problem with its line."""
    if "networking.istio.io" not in text:
        return []  # a file of authorization policies only: not parsed a second time
    from agent.traffic import documents

    return documents.load(text, path, domain)
