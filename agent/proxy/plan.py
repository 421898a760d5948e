"""Where a captured connection goes: the routing decision, free of I/O.

``plan_outbound(src, dst, view)`` answers for a connection a local pod opened;
``plan_inbound(dst, view)`` for one arriving at this node. They never touch a socket,
the clock or the registry's owner: everything they need is in a ``RoutingView`` built
from the agent's state, and time-dependent choices (skipping endpoints that failed
recently) take ``now`` as an argument.

Outcomes mirror ztunnel's: a pod on another node goes through an mTLS tunnel to that
node's :15008; a pod on this node takes the local path (policy and telemetry still
apply, no TLS on one host); a service VIP resolves to an endpoint; anything else is
passthrough to the original destination, or refused when egress is denied.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.state.layered import Layered
from agent.state.workloads import Registry, Workload

# SPEC.md: targets 15001, 15006, 15008, 15020, 15021 are refused (loop guard).
Kind = Literal["tunnel", "local", "passthrough"]


@dataclass(frozen=True, slots=True)
class Refuse:
    reason: str  # machine-friendly: "unknown_source", "loop", "egress_denied", "no_endpoint"
    status: int = 503  # what a tunnel peer would answer for the same outcome
    flag: str | None = None  # Envoy response flag (traffic rules): NR, UO, UH


@dataclass(frozen=True, slots=True)
class Route:
    kind: Kind
    dst_ip: str
    dst_port: int
    src: Workload | None
    dst: Workload | None = None
    node_name: str | None = None  # tunnel: the peer node
    node_address: str | None = None  # tunnel: where its :15008 listens
    service: str | None = None  # "ns/name" when a VIP was resolved
    cluster: str | None = None  # traffic rules: the cluster counted (agent.traffic.planner)
    connect_timeout_s: float | None = None  # DestinationRule connectionPool.tcp.connectTimeout


@dataclass(frozen=True, slots=True)
class HttpRouted:
    """A service whose VirtualService has ``http`` routes for this port: requests are
    routed one by one (agent.proxy.http_route, agent.traffic.http)."""

    service: Service
    src: Workload
    port: int


Plan = Route | Refuse | HttpRouted


@dataclass(frozen=True, slots=True)
class PeerNode:
    name: str
    address: str
    networks: tuple  # ipaddress networks of its pods


@dataclass
class Service:
    name: str
    namespace: str
    vip: str
    ports: frozenset[int]
    endpoints: tuple[str, ...]
    target_port: int | None = None


@dataclass
class EndpointHealth:
    """Recent connect failures per endpoint and live connection counts (for picking)."""

    # A failed endpoint is skipped for this long (ztunnel / Envoy outlier ejection idea).
    eject_s: float = 10.0
    failed_at: dict[str, float] = field(default_factory=dict)
    active: dict[str, int] = field(default_factory=dict)
    cursor: dict[str, int] = field(default_factory=dict)
    # services under traffic rules: connection counts and ejections (agent.traffic.planner)
    traffic: Any = None
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.traffic is None:
            from agent.traffic.planner import TrafficState

            self.traffic = TrafficState()

    def mark_failed(self, endpoint: str, now: float) -> None:
        self.failed_at[endpoint] = now

    def mark_ok(self, endpoint: str) -> None:
        self.failed_at.pop(endpoint, None)

    def healthy(self, endpoint: str, now: float) -> bool:
        t = self.failed_at.get(endpoint)
        return t is None or now - t >= self.eject_s


@dataclass
class RoutingView:
    node_name: str
    registry: Registry
    peers: Sequence[PeerNode]
    services: Mapping[tuple[str, int], Service]  # (vip, port) -> Service (a Layered map)
    agent_ports: frozenset[int]
    local_addresses: frozenset[str] = frozenset()
    egress: Literal["allow", "deny"] = "allow"
    balance: Literal["round_robin", "least_conn"] = "round_robin"
    traffic: Any = None  # agent.traffic.store.TrafficStore: DestinationRules, VirtualServices
    locality: dict[str, tuple[str, str]] = field(default_factory=dict)  # node -> (region, zone)
    by_key: Mapping[tuple[str, str], Service] = field(default_factory=Layered)  # (ns, name) -> Service
    meta: Any = None  # endpoint_meta's function, made once per view


def peer_for(ip: str, peers: Sequence[PeerNode]) -> PeerNode | None:
    addr = ipaddress.ip_address(ip)
    for p in peers:
        for net in p.networks:
            if addr.version == net.version and addr in net:
                return p
    return None


def pick_endpoints(svc: Service, health: EndpointHealth, now: float, balance: str) -> list[str]:
    """Endpoints in the order to try: healthy first (rotated or least-loaded), then the rest.

    The caller tries them in order on connect failure, bounded by ``MAX_CONNECT_ATTEMPTS``.
    """
    eps = list(svc.endpoints)
    if not eps:
        return []
    key = f"{svc.namespace}/{svc.name}"
    if balance == "least_conn":
        eps.sort(key=lambda e: health.active.get(e, 0))
    else:
        start = health.cursor.get(key, 0) % len(eps)
        health.cursor[key] = start + 1
        eps = eps[start:] + eps[:start]
    healthy = [e for e in eps if health.healthy(e, now)]
    return (healthy + [e for e in eps if e not in healthy])[:MAX_CONNECT_ATTEMPTS]


# Connect attempts across endpoints of one service before the client gets a refusal.
MAX_CONNECT_ATTEMPTS = 3


def route_to_ip(src: Workload | None, dst_ip: str, dst_port: int, view: RoutingView) -> Plan:
    """The route to a concrete (non-VIP) destination address."""
    if dst_port in view.agent_ports and (dst_ip in view.local_addresses or view.registry.by_ip(dst_ip)):
        return Refuse("loop", 503)
    dst = view.registry.by_ip(dst_ip)
    if dst is not None and dst.node is None:
        return Route("local", dst_ip, dst_port, src, dst)
    peer = None
    if dst is not None:
        peer = next((p for p in view.peers if p.name == dst.node), None)
    if peer is None:
        peer = peer_for(dst_ip, view.peers)
    if peer is not None:
        return Route("tunnel", dst_ip, dst_port, src, dst, peer.name, peer.address)
    if view.egress == "deny":
        return Refuse("egress_denied", 403)
    return Route("passthrough", dst_ip, dst_port, src, None)


def plan_outbound(
    src_ip: str, dst_ip: str, dst_port: int, view: RoutingView, health: EndpointHealth, now: float
) -> Sequence[Plan]:
    """Routes to try in order for a connection a local pod opened (one unless a VIP).

    The source must be an enrolled local pod: capture only steers enrolled pods here, so
    anything else is a misconfiguration or spoofing and is refused.
    """
    src = view.registry.by_ip(src_ip)
    if src is None or src.node is not None:
        return [Refuse("unknown_source", 403)]
    svc = view.services.get((dst_ip, dst_port))
    if svc is None:
        return [route_to_ip(src, dst_ip, dst_port, view)]
    if view.traffic is not None and view.traffic.applies((svc.namespace, svc.name)):
        from agent.traffic.planner import tcp_route

        vs = view.traffic.virtual_service((svc.namespace, svc.name))
        if vs is not None and vs.http and tcp_route(vs, dst_port) is None:
            return [HttpRouted(svc, src, dst_port)]
        return _plan_traffic(src, svc, dst_port, view, health, now)
    port = svc.target_port or dst_port
    eps = pick_endpoints(svc, health, now, view.balance)
    if not eps:
        return [Refuse("no_endpoint", 503)]
    plans: list[Plan] = []
    for ep in eps:
        p = route_to_ip(src, ep, port, view)
        if isinstance(p, Route):
            p = Route(p.kind, p.dst_ip, p.dst_port, p.src, p.dst, p.node_name, p.node_address,
                      f"{svc.namespace}/{svc.name}")
        plans.append(p)
    return plans


# Node labels that place a node (Kubernetes well-known labels; Istio reads the same).
REGION_LABEL, ZONE_LABEL = "topology.kubernetes.io/region", "topology.kubernetes.io/zone"


def _plan_traffic(src: Workload, svc: Service, dst_port: int, view: RoutingView, health: EndpointHealth,
                  now: float) -> Sequence[Plan]:
    """A service under DestinationRule/VirtualService rules: ``agent.traffic.planner`` picks."""
    from agent.traffic.planner import NoPick, plan_service

    pick = plan_service(view.traffic, view.by_key, svc, dst_port, client_ns=src.namespace,
                        client_locality=view.locality.get(view.node_name, ("", "")), meta=endpoint_meta(view),
                        state=health.traffic, now=now, rng=health.rng, attempts=MAX_CONNECT_ATTEMPTS)
    if isinstance(pick, NoPick):
        return [Refuse(pick.reason, 503, pick.flag)]
    return pick_routes(src, pick, view)


def endpoint_meta(view: RoutingView):
    """``ip -> EndpointMeta`` (labels, region, zone) from the registry and node labels."""
    if view.meta is not None:
        return view.meta
    from agent.traffic.planner import EndpointMeta

    def meta(ip: str) -> EndpointMeta | None:
        w = view.registry.by_ip(ip)
        if w is None:
            return None
        region, zone = view.locality.get(w.node or view.node_name, ("", ""))
        return EndpointMeta(w.labels, region, zone)

    view.meta = meta
    return meta


class PickRoutes(Sequence):
    """The routes to a planner ``Pick``'s endpoints, in its order, each made when first
    read: the retry alternatives cost nothing until a connect fails."""

    def __init__(self, src: Workload, pick, view: RoutingView) -> None:
        self._src, self._pick, self._view = src, pick, view
        self._made: dict[int, Plan] = {}

    def __len__(self) -> int:
        return len(self._pick.endpoints)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        p = self._made.get(i)
        if p is None:
            pick = self._pick
            p = route_to_ip(self._src, pick.endpoints[i], pick.port, self._view)
            if isinstance(p, Route):
                p = Route(p.kind, p.dst_ip, p.dst_port, p.src, p.dst, p.node_name, p.node_address,
                          f"{pick.service[0]}/{pick.service[1]}", pick.cluster, pick.connect_timeout_s)
            self._made[i] = p
        return p


def pick_routes(src: Workload, pick, view: RoutingView) -> PickRoutes:
    return PickRoutes(src, pick, view)


def plan_inbound(dst_ip: str, dst_port: int, view: RoutingView) -> Plan:
    """A connection arriving for ``dst_ip:dst_port`` (tunnel CONNECT or plaintext capture).

    SPEC.md: the destination agent checks the target is a local pod, not one of its own
    ports; unknown destinations answer 503.
    """
    if dst_port in view.agent_ports:
        return Refuse("loop", 400)
    dst = view.registry.by_ip(dst_ip)
    if dst is None or dst.node is not None:
        return Refuse("unknown_destination", 503)
    return Route("local", dst_ip, dst_port, None, dst)


def build_view(config, registry: Registry, traffic: Any = None) -> RoutingView:
    """The routing view from the agent's config (peers, services), registry and traffic rules."""
    peers = tuple(
        PeerNode(n.name, n.address, tuple(ipaddress.ip_network(c) for c in n.pod_cidrs))
        for n in config.cluster.nodes
        if n.name != config.node.name
    )
    services: dict = {}
    by_key: dict = {}
    for s in config.cluster.services:
        svc = _service(s)
        by_key[(s.namespace, s.name)] = svc
        for port in s.ports:
            services[(s.vip, port)] = svc
    locality = {n.name: (n.labels.get(REGION_LABEL, ""), n.labels.get(ZONE_LABEL, "")) for n in config.cluster.nodes}
    me = config.node.labels or next((n.labels for n in config.cluster.nodes if n.name == config.node.name), {})
    locality[config.node.name] = (me.get(REGION_LABEL, ""), me.get(ZONE_LABEL, ""))
    p = config.ports
    local = {config.node.address, "127.0.0.1", "::1"}
    if config.node.address6:
        local.add(config.node.address6)
    return RoutingView(
        node_name=config.node.name,
        registry=registry,
        peers=peers,
        services=Layered(services),
        agent_ports=frozenset({p.outbound, p.inbound_plain, p.tunnel, p.metrics, p.readiness,
                               15001, 15006, 15008, 15020, 15021}),
        local_addresses=frozenset(local),
        egress=config.dataplane.egress,
        traffic=traffic,
        locality=locality,
        by_key=Layered(by_key),
    )


def _service(s) -> Service:
    return Service(s.name, s.namespace, s.vip, frozenset(s.ports), tuple(s.endpoints), s.target_port)


def with_services(view: RoutingView, delta: Mapping) -> RoutingView:
    """The view with some services changed: ``delta`` is ``{(vip, port): ServiceConfig or
    None (gone)}`` and names every entry of each service it touches (what discovery's apply
    gives). Equals ``build_view`` of the changed config (test_plan); costs the size of the
    change, not of the table. ``view`` itself is left as it was."""
    made: dict[int, Service] = {}
    entries: dict = {}
    for key, s in delta.items():
        entries[key] = None if s is None else made.get(id(s)) or made.setdefault(id(s), _service(s))
    names: dict = {}
    for key in delta:  # what these entries held goes first: a name that stays is set again below
        old = view.services.get(key)
        if old is not None:
            names[(old.namespace, old.name)] = None
    for svc in entries.values():
        if svc is not None:
            names.pop((svc.namespace, svc.name), None)
            names[(svc.namespace, svc.name)] = svc
    # a shallow copy with three fields set: dataclasses.replace re-runs __init__ over every
    # field (most of this function's cost, per EndpointSlice event)
    out = object.__new__(RoutingView)
    out.__dict__.update(view.__dict__)
    out.services, out.by_key, out.meta = view.services.changed(entries), view.by_key.changed(names), None
    return out
