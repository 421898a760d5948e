"""Istio's standard metric labels from telemetry records, as Istio and ztunnel derive them.

Pure: records and plain values in, label tuples out (no sockets, no clock, no agent), so
the trio relay, the HTTP inspector and a native data plane that reports finished
connections as records all feed the same derivation.

What it decides (docs/telemetry.md has the table):
- ``reporter``: ``source`` for the agent of the client's node, ``destination`` for the
  server's (ztunnel's ``Reporter``).
- canonical service / revision from the workload's labels in Istio's order
  (``service.istio.io/canonical-name``, ``app.kubernetes.io/name``, ``app``, else the
  workload name; ``service.istio.io/canonical-revision``, ``app.kubernetes.io/version``,
  ``version``, else ``latest``); ``*_app`` / ``*_version`` carry the same values, as
  ztunnel reports them.
- ``destination_service*`` from the service the client dialled (a VIP), else the
  service the destination workload serves on that port (ztunnel's
  ``guess_inbound_service``), else ``unknown``.
- ``connection_security_policy``: ``mutual_tls`` over a tunnel, else ``unknown``
  (ztunnel's ``SecurityPolicy``).
- ``response_flags``: ``-``; ``DENY`` for an authorization deny; Envoy's ``UF``, ``UH``,
  ``NR``, ``UO``, ``URX`` for upstream failures, no healthy endpoint, no route, overflow
  and exhausted retries; ``UC`` / ``DC`` for an exchange cut by the upstream / the client.
It never invents values: anything not known is ``unknown``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

PEER = ("workload", "canonical_service", "canonical_revision", "workload_namespace", "principal", "app",
        "version", "cluster")
# The order ztunnel's CommonTrafficLabels encodes them in, then the locality labels.
TRAFFIC_LABELS = (("reporter",) + tuple(f"source_{n}" for n in PEER)
                  + ("destination_service", "destination_service_namespace", "destination_service_name")
                  + tuple(f"destination_{n}" for n in PEER)
                  + ("request_protocol", "response_flags", "connection_security_policy",
                     "source_region", "source_zone", "destination_region", "destination_zone"))
TCP_LABELS = TRAFFIC_LABELS
HTTP_LABELS = TRAFFIC_LABELS + ("response_code",)
FLAGS_AT = TRAFFIC_LABELS.index("response_flags")
UNKNOWN = "unknown"

# Istio (labels.CanonicalServiceLabelName ...): the first label present wins.
CANONICAL_NAME_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
CANONICAL_REVISION_LABELS = ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")
# Flags that mean the connection was not established (istio_tcp_connections_failed_total).
FAILED_FLAGS = frozenset({"DENY", "UF", "UH", "NR", "UO", "URX"})


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """A service as the labels name it: ``hostname`` is ``<name>.<namespace>.svc.<domain>``."""

    name: str
    namespace: str
    hostname: str


@dataclass(frozen=True)
class LabelContext:
    """What the labels need besides the record: the cluster's name (Istio's default is
    ``Kubernetes``) and each node's locality (region, zone) where known."""

    cluster: str = "Kubernetes"
    local_node: str = ""
    localities: Mapping[str, tuple[str, str]] = field(default_factory=dict)


def canonical(labels: Mapping[str, str] | None, workload: str | None) -> tuple[str, str]:
    """(canonical service, canonical revision) as Istio derives them."""
    labels = labels or {}
    name = next((labels[k] for k in CANONICAL_NAME_LABELS if labels.get(k)), None) or workload or UNKNOWN
    rev = next((labels[k] for k in CANONICAL_REVISION_LABELS if labels.get(k)), None) or "latest"
    return name, rev


def spiffe(principal: str | None) -> str:
    if not principal:
        return UNKNOWN
    return principal if principal.startswith("spiffe://") else f"spiffe://{principal}"


def peer_values(ep, ctx: LabelContext) -> tuple[tuple[str, ...], tuple[str, str]]:
    """An ``Endpoint``'s eight peer labels and its (region, zone)."""
    if not ep.workload:
        return (UNKNOWN, UNKNOWN, UNKNOWN, ep.namespace or UNKNOWN, spiffe(ep.principal), UNKNOWN, UNKNOWN,
                UNKNOWN), (UNKNOWN, UNKNOWN)
    name, rev = canonical(ep.labels, ep.workload)
    where = ctx.localities.get(ep.node or ctx.local_node, (UNKNOWN, UNKNOWN))
    return (ep.workload, name, rev, ep.namespace or UNKNOWN, spiffe(ep.principal), name, rev, ctx.cluster), where


def security_policy(mode: str) -> str:
    return "mutual_tls" if mode == "tunnel" else UNKNOWN


def response_flags(verdict: str, reason: str | None, established: bool = False) -> str:
    """Envoy/ztunnel's response flag for how a connection ended. Once ``established``
    a connection's verdict no longer flags it — an HTTP request denied on it is that
    request's 403, not the connection's failure — unless a policy change closed it
    (ztunnel's late rejection: ``DENY``)."""
    r = (reason or "").split(":", 1)[0]
    if established:
        return "DENY" if r == "policy_changed" else "-"
    if r in ("no_endpoint",):
        return "UH"
    if r in ("unknown_destination", "loop", "tunnel_status_503", "tunnel_status_400"):
        return "NR"
    if "overflow" in r or r in ("pool_full", "connection_limit"):
        return "UO"
    if "retries" in r:
        return "URX"
    if verdict == "deny":
        return "DENY"
    if r in ("connect_failed", "upstream_failed", "tunnel_failed", "tunnel_status_502", "tunnel_status_504",
             "handshake_failed", "timeout"):
        return "UF"
    return "-"


def service_ref(name: str, namespace: str, domain: str = "cluster.local") -> ServiceRef:
    return ServiceRef(name, namespace, f"{name}.{namespace}.svc.{domain}")


def service_index(services, domain: str = "cluster.local") -> dict[tuple[str, int], ServiceRef]:
    """(endpoint ip, target port) -> the service it serves, from a routing view's
    ``{(vip, port): Service}``; the first service by name wins where several do."""
    out: dict[tuple[str, int], ServiceRef] = {}
    for svc in sorted({id(s): s for s in services.values()}.values(), key=lambda s: (s.namespace, s.name)):
        ref = service_ref(svc.name, svc.namespace, domain)
        ports = [svc.target_port] if svc.target_port else sorted(svc.ports)
        for ep in svc.endpoints:
            for port in ports:
                out.setdefault((ep, port), ref)
    return out


def _service_values(svc: ServiceRef | None) -> tuple[str, str, str]:
    if svc is None:
        return UNKNOWN, UNKNOWN, UNKNOWN
    return svc.hostname, svc.namespace, svc.name


def traffic_labels(direction: str, mode: str, src, dst, service: ServiceRef | None, protocol: str, flags: str,
                   ctx: LabelContext) -> tuple[str, ...]:
    s, s_loc = peer_values(src, ctx)
    d, d_loc = peer_values(dst, ctx)
    return (("source" if direction == "outbound" else "destination",) + s + _service_values(service) + d
            + (protocol, flags, security_policy(mode)) + s_loc + d_loc)


def tcp_labels(rec, ctx: LabelContext, flags: str = "-") -> tuple[str, ...]:
    """Labels of a ``ConnRecord``'s TCP series. Opened and byte counters use ``-``
    (known when the connection opens); closed and failed carry the final flag."""
    return traffic_labels(rec.direction, rec.mode, rec.src, rec.dst, rec.service, "tcp", flags, ctx)


def with_flags(labels: tuple[str, ...], flags: str) -> tuple[str, ...]:
    return labels[:FLAGS_AT] + (flags,) + labels[FLAGS_AT + 1:]


def http_labels(req, ctx: LabelContext) -> tuple[str, ...]:
    """Labels of a ``RequestRecord``'s series (istio_requests_total and the histograms)."""
    return traffic_labels(req.direction, req.mode, req.src, req.dst, req.service, "http", req.flags, ctx) + (
        str(req.status),)


# Envoy's default histogram bounds (ms for durations, bytes for sizes): what Istio's
# proxies report unless sidecar.istio.io/statsHistogramBuckets says otherwise.
BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000,
           3600000)


@dataclass(slots=True)
class TcpAccount:
    """What a live connection has already put into the counters, so bytes reach them as
    they flow (``progress``) and the rest when it ends, never twice."""

    labels: tuple[str, ...]
    sent: int = 0  # towards the destination (Istio: received)
    received: int = 0  # back to the source (Istio: sent)

    def delta(self, sent: int, received: int) -> tuple[int, int]:
        """(Istio received, Istio sent) not counted yet; byte counts only grow."""
        d_up, d_down = max(0, sent - self.sent), max(0, received - self.received)
        self.sent, self.received = max(sent, self.sent), max(received, self.received)
        return d_up, d_down
