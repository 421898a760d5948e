"""Which endpoint a connection to a service goes to, under the traffic rules. Pure.

``plan_service`` answers for one new connection: the VirtualService route (weights:
canary splits), the DestinationRule subset (endpoints by labels), the connection limit
(``UO`` at once, never a queue), outlier ejections, locality preference and the load
balancer, and the endpoints to try in order when a connect fails (``UF``; another
healthy endpoint, never the one that just failed). Live connection counts, ejections and
the round-robin cursor are values in ``TrafficState``, which the data path updates
(``acquire``/``release``/``report``); time and randomness are passed in. It never
touches a socket, a clock or the registry.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agent.traffic import hosts as hostnames
from agent.traffic.http import RetryBudget
from agent.traffic.model import Destination, Locality, OutlierDetection, ServiceKey, TrafficPolicy
from agent.traffic.outlier import Detector, Ejection
from agent.traffic.store import TrafficStore

# Clusters whose state is kept; beyond it idle ones (no live connection, nothing
# ejected) are forgotten. Clusters = rules x ports x subsets, so this is generous.
MAX_CLUSTERS = 10_000


@dataclass(frozen=True, slots=True)
class EndpointMeta:
    labels: Mapping[str, str]
    region: str = ""
    zone: str = ""


@dataclass(frozen=True, slots=True)
class Pick:
    cluster: str
    service: ServiceKey
    subset: str | None
    port: int  # the endpoints' port
    endpoints: tuple[str, ...]  # to try in this order
    connect_timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class NoPick:
    flag: str  # Envoy's response flag: NR no route, UO overflow, UH no healthy upstream
    reason: str
    cluster: str | None = None


@dataclass
class ClusterState:
    active: int = 0
    cursor: int = 0
    detector: Detector | None = None
    size: int = 0
    endpoints: tuple[str, ...] = ()
    compiled: dict = field(default_factory=dict)  # key -> Compiled (below)


@dataclass
class TrafficState:
    clusters: dict[str, ClusterState] = field(default_factory=dict)
    active: dict[str, int] = field(default_factory=dict)  # live connections per endpoint
    overflow: dict[str, int] = field(default_factory=dict)  # UO refusals per cluster
    budgets: dict[str, RetryBudget] = field(default_factory=dict)  # per VirtualService
    # moved whenever endpoints or their labels may have changed (the agent's registry):
    # the compiled endpoint sets are made again
    generation: int = 0
    names: dict[tuple, str] = field(default_factory=dict)  # (port, subset, host) -> cluster name

    def endpoints_changed(self) -> None:
        self.generation += 1

    def budget(self, name: str) -> RetryBudget:
        b = self.budgets.get(name)
        if b is None:
            b = self.budgets[name] = RetryBudget()
        return b

    def cluster(self, name: str) -> ClusterState:
        c = self.clusters.get(name)
        if c is None:
            if len(self.clusters) >= MAX_CLUSTERS:
                for k in [k for k, v in self.clusters.items() if not v.active and not (v.detector and v.detector.hosts)]:
                    del self.clusters[k]
            c = self.clusters[name] = ClusterState()
        return c

    def acquire(self, cluster: str, ep: str) -> None:
        self.cluster(cluster).active += 1
        self.active[ep] = self.active.get(ep, 0) + 1

    def release(self, cluster: str, ep: str) -> None:
        c = self.clusters.get(cluster)
        if c is not None and c.active > 0:
            c.active -= 1
        n = self.active.get(ep, 0) - 1
        if n > 0:
            self.active[ep] = n
        else:
            self.active.pop(ep, None)

    def report(self, cluster: str, ep: str, outcome: str | int, now: float) -> Ejection | None:
        c = self.clusters.get(cluster)
        if c is None or c.detector is None:
            return None
        return c.detector.report(ep, outcome, now, c.size)

    def ejected(self, now: float) -> list[dict]:
        out = []
        for name, c in sorted(self.clusters.items()):
            for ep, h in c.detector.ejected(now) if c.detector else ():
                out.append({"cluster": name, "endpoint": ep, "reason": h.reason, "times_ejected": h.times_ejected,
                            "ejected_for_s": round(h.ejected_until - now, 3)})
        return out


def plan_service(store: TrafficStore, services: Mapping[ServiceKey, object], svc, port: int, *,
                 client_ns: str | None, client_locality: tuple[str, str], meta: Callable[[str], EndpointMeta | None],
                 state: TrafficState, now: float, rng: random.Random, attempts: int = 3,
                 http_port: bool = False) -> Pick | NoPick:
    """The endpoints to try for a connection to ``svc`` (a routing-view Service) on ``port``."""
    key = (svc.namespace, svc.name)
    dest = Destination(key)
    vs = store.virtual_service(key)
    if vs is not None:
        routes = _routes(vs, port, http_port)
        if routes is None:
            return NoPick("NR", f"no route of {vs.namespace}/{vs.name} matches port {port}")
        dest = weighted(routes, rng)
    return plan_destination(store, services, dest, port, client_ns=client_ns, client_locality=client_locality,
                            meta=meta, state=state, now=now, rng=rng, attempts=attempts)


def plan_destination(store: TrafficStore, services: Mapping[ServiceKey, object], dest: Destination, port: int, *,
                     client_ns: str | None, client_locality: tuple[str, str],
                     meta: Callable[[str], EndpointMeta | None], state: TrafficState, now: float, rng: random.Random,
                     attempts: int = 3, avoid: frozenset[str] = frozenset()) -> Pick | NoPick:
    """The endpoints for one route destination (host, subset, port); ``avoid``: endpoints
    an earlier attempt of the same request used (Istio's previous-hosts retry predicate),
    tried last."""
    target = services.get(dest.host)
    if target is None:
        return NoPick("NR", f"no service {hostnames.fqdn(dest.host, store.domain)}")
    svc_port = dest.port or port
    ep_port = target.target_port or svc_port
    nk = (svc_port, dest.subset, dest.host)
    name = state.names.get(nk)
    if name is None:  # Istio's cluster name; made once (a decision is on the connection's path)
        if len(state.names) >= MAX_CLUSTERS:
            state.names.clear()
        name = state.names[nk] = f"outbound|{svc_port}|{dest.subset or ''}|{hostnames.fqdn(dest.host, store.domain)}"
    c = state.cluster(name)
    comp = _compiled(c, store, state, target, dest, svc_port, client_ns, client_locality, meta)
    if isinstance(comp, NoPick):
        return comp
    policy = comp.policy
    pool = policy.connection_pool
    if pool is not None and pool.max_connections is not None and c.active >= pool.max_connections:
        state.overflow[name] = state.overflow.get(name, 0) + 1
        return NoPick("UO", f"{name}: {c.active} connections, maxConnections {pool.max_connections}", name)
    groups = comp.groups
    ejected = c.detector.ejected_now(now) if c.detector is not None else None
    if ejected:
        groups = [kept for g in groups if (kept := [e for e in g if e not in ejected])]
    if not groups:
        return NoPick("UH", f"{name}: no endpoint" if not comp.endpoints else f"{name}: every endpoint is ejected",
                      name)
    lb = policy.load_balancer
    first = groups[0]
    i = _choose(first, (lb.simple if lb else None) or "LEAST_REQUEST", c, state, rng)
    want = max(attempts, 1) + len(avoid)
    order: list[str] = []
    for e in itertools.chain(first[i:], first[:i], *groups[1:]):
        order.append(e)
        if len(order) >= want:
            break
    if avoid:
        order = [e for e in order if e not in avoid] + [e for e in order if e in avoid]
    return Pick(name, dest.host, dest.subset, ep_port, tuple(order[:max(attempts, 1)]),
                pool.connect_timeout_s if pool else None)


@dataclass
class Compiled:
    """What a cluster's rules make of its endpoints for one kind of client, kept until
    the endpoints, their labels (``TrafficState.generation``) or the rules change."""

    source: object  # the service's endpoint tuple this was made from (held: identity is the key)
    key: tuple
    policy: TrafficPolicy
    endpoints: tuple[str, ...]
    groups: list[list[str]]


# Compiled views kept per cluster (one per client namespace and locality in use).
MAX_COMPILED_PER_CLUSTER = 64


def _compiled(c: ClusterState, store: TrafficStore, state: TrafficState, target, dest: Destination, svc_port: int,
              client_ns: str | None, client_locality: tuple[str, str], meta) -> Compiled | NoPick:
    key = (state.generation, store.generation, client_ns, client_locality)
    comp = c.compiled.get(key)
    if comp is not None and comp.source is target.endpoints:
        return comp
    dr = store.destination_rule(dest.host, client_ns)
    eps = tuple(target.endpoints)
    if dest.subset is not None:
        sub = dr.subset(dest.subset) if dr is not None else None
        if sub is None:
            return NoPick("NR", f"subset {dest.subset!r} of {hostnames.fqdn(dest.host, store.domain)} is not defined")
        eps = tuple(e for e in eps if _has_labels(meta(e), sub.labels))
    policy = dr.effective(svc_port, dest.subset) if dr is not None else TrafficPolicy()
    _configure(c, policy.outlier, eps)
    lb = policy.load_balancer
    groups = _by_locality(list(eps), lb.locality if lb else None, client_locality, meta) if eps else []
    if len(c.compiled) >= MAX_COMPILED_PER_CLUSTER:
        c.compiled.clear()
    comp = c.compiled[key] = Compiled(target.endpoints, key, policy, eps, groups)
    return comp


def tcp_route(vs, port: int) -> tuple[Destination, ...] | None:
    for r in vs.tcp:
        if not r.ports or port in r.ports:
            return r.route
    return None


def _routes(vs, port: int, http_port: bool) -> tuple[Destination, ...] | None:
    """The destinations of the first route for a connection to ``port``. On the
    connection path an ``http`` route applies when its matches need no request
    (none, or a port only); per-request matching is ``agent.traffic.http``."""
    tcp = tcp_route(vs, port)
    if tcp is not None:
        return tcp
    if http_port or not vs.tcp:
        for h in vs.http:
            if not h.matches or any(m.uri is None and m.method is None and not m.headers and m.port in (None, port)
                                    for m in h.matches):
                return h.route
    return None


def weighted(routes: tuple[Destination, ...], rng: random.Random) -> Destination:
    if len(routes) == 1:
        return routes[0]
    x = rng.random() * sum(d.weight for d in routes)
    for d in routes:
        x -= d.weight
        if x < 0:
            return d
    return routes[-1]


def _has_labels(m: EndpointMeta | None, labels: tuple[tuple[str, str], ...]) -> bool:
    return m is not None and all(m.labels.get(k) == v for k, v in labels)


def _configure(c: ClusterState, cfg: OutlierDetection | None, eps: tuple[str, ...]) -> None:
    if cfg is None:
        c.detector = None
    elif c.detector is None:
        c.detector = Detector(cfg)
    else:
        c.detector.cfg = cfg
    if eps != c.endpoints:
        c.endpoints, c.size = eps, len(eps)
        if c.detector is not None:
            c.detector.forget(set(eps))


def _by_locality(eps: list[str], loc: Locality | None, client: tuple[str, str], meta) -> list[list[str]]:
    """Endpoints grouped by preference: same zone, same region, the failover regions in
    order, the rest (Istio's locality-prioritized load balancing)."""
    if loc is None or not loc.enabled:
        return [eps]
    region, zone = client
    to = [t for f, t in loc.failover if f == region]
    groups: dict[int, list[str]] = {}
    for e in eps:
        m = meta(e)
        r, z = (m.region, m.zone) if m is not None else ("", "")
        if r == region:
            p = 0 if z == zone else 1
        else:
            p = 2 + to.index(r) if r in to else 2 + len(to)
        groups.setdefault(p, []).append(e)
    return [groups[p] for p in sorted(groups)]


def _choose(eps: list[str], simple: str, c: ClusterState, state: TrafficState, rng: random.Random) -> int:
    """The index in ``eps`` of the endpoint the load balancer picks."""
    n = len(eps)
    if n == 1:
        return 0
    if simple == "ROUND_ROBIN":
        c.cursor += 1
        return (c.cursor - 1) % n
    if simple == "RANDOM":
        return int(rng.random() * n)
    # LEAST_REQUEST: Envoy's power of two choices over live connections
    i = int(rng.random() * n)
    j = (i + 1 + int(rng.random() * (n - 1))) % n
    return j if state.active.get(eps[j], 0) < state.active.get(eps[i], 0) else i
