"""Compiled traffic rules: what a DestinationRule or VirtualService means once loaded.

Plain frozen values, built by ``agent.traffic.loader`` and read by the planner. Nothing
here decides anything or touches I/O; field names follow Istio's (snake_case) so the
docs and ``/v1/config_dump`` read like the documents they came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Simple = Literal["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"]
ServiceKey = tuple[str, str]  # (namespace, name) of a Kubernetes/lab service


@dataclass(frozen=True, slots=True)
class Locality:
    """``loadBalancer.localityLbSetting``: prefer the client's zone, then region, then
    the ``failover`` regions in order (Istio: locality failover needs outlierDetection)."""

    enabled: bool = True
    failover: tuple[tuple[str, str], ...] = ()  # (from region, to region)


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    simple: Simple | None = None
    locality: Locality | None = None


@dataclass(frozen=True, slots=True)
class ConnectionPool:
    max_connections: int | None = None  # per cluster (Envoy's circuit breaker)
    connect_timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Istio defaults (networking/v1 destination_rule.proto): 5 consecutive 5xx, 10 s
    interval, 30 s base ejection, at most 10 % ejected. Envoy caps ejection at 300 s."""

    consecutive_5xx: int | None = 5
    consecutive_gateway: int | None = None
    consecutive_local_origin: int | None = None
    split_local_origin: bool = False
    interval_s: float = 10.0
    base_ejection_s: float = 30.0
    max_ejection_percent: int = 10
    max_ejection_s: float = 300.0


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier: OutlierDetection | None = None

    def over(self, parent: TrafficPolicy | None) -> TrafficPolicy:
        """This policy's set fields over ``parent``'s (Istio merges subset and port-level
        settings into the rule's field by field: loadBalancer, connectionPool, outlierDetection)."""
        if parent is None:
            return self
        return replace(parent, **{k: getattr(self, k) for k in ("load_balancer", "connection_pool", "outlier")
                                  if getattr(self, k) is not None})


@dataclass(frozen=True, slots=True)
class Subset:
    name: str
    labels: tuple[tuple[str, str], ...]
    policy: TrafficPolicy | None = None
    port_policies: tuple[tuple[int, TrafficPolicy], ...] = ()


@dataclass(frozen=True, slots=True)
class DestinationRule:
    namespace: str
    name: str
    host: ServiceKey
    policy: TrafficPolicy | None = None
    port_policies: tuple[tuple[int, TrafficPolicy], ...] = ()
    subsets: tuple[Subset, ...] = ()
    kind: str = "DestinationRule"

    def subset(self, name: str) -> Subset | None:
        return next((s for s in self.subsets if s.name == name), None)

    def effective(self, port: int, subset: str | None) -> TrafficPolicy:
        """The policy for traffic to ``port`` of ``subset`` (None: the whole host)."""
        pol = TrafficPolicy().over(None)
        for layer in (self.policy, dict(self.port_policies).get(port)):
            if layer is not None:
                pol = layer.over(pol)
        s = self.subset(subset) if subset else None
        if s is not None:
            for layer in (s.policy, dict(s.port_policies).get(port)):
                if layer is not None:
                    pol = layer.over(pol)
        return pol


@dataclass(frozen=True, slots=True)
class Destination:
    host: ServiceKey
    subset: str | None = None
    port: int | None = None
    weight: int = 100


@dataclass(frozen=True, slots=True)
class StringMatch:
    kind: Literal["exact", "prefix"]
    value: str

    def matches(self, s: str | None) -> bool:
        if s is None:
            return False
        return s == self.value if self.kind == "exact" else s.startswith(self.value)


@dataclass(frozen=True, slots=True)
class HttpMatch:
    uri: StringMatch | None = None
    method: StringMatch | None = None
    headers: tuple[tuple[str, StringMatch], ...] = ()  # names lower-case
    port: int | None = None


@dataclass(frozen=True, slots=True)
class Retries:
    attempts: int = 2  # Istio's default retry policy: 2 attempts
    per_try_timeout_s: float | None = None
    retry_on: frozenset[str] = frozenset({"connect-failure", "refused-stream", "unavailable", "cancelled",
                                          "retriable-status-codes", "503"})


@dataclass(frozen=True, slots=True)
class HttpRoute:
    name: str
    matches: tuple[HttpMatch, ...]  # empty: every request
    route: tuple[Destination, ...]
    timeout_s: float | None = None
    retries: Retries | None = Retries()


@dataclass(frozen=True, slots=True)
class TcpRoute:
    ports: tuple[int, ...]  # empty: every port
    route: tuple[Destination, ...]


@dataclass(frozen=True, slots=True)
class VirtualService:
    namespace: str
    name: str
    hosts: tuple[ServiceKey, ...]
    tcp: tuple[TcpRoute, ...] = ()
    http: tuple[HttpRoute, ...] = ()
    kind: str = "VirtualService"


TrafficDoc = DestinationRule | VirtualService


@dataclass
class Loaded:
    """A document as loaded: the compiled value and the mapping it came from (kept so
    worker processes and ``config_dump`` get the operator's own document back)."""

    doc: TrafficDoc
    source: dict = field(default_factory=dict)
