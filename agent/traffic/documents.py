"""Traffic documents -> compiled rules, or ``path:line: field: message`` errors: the
pydantic models of Istio's ``DestinationRule`` and ``VirtualService`` and what they
compile to. Imported by ``agent.traffic.loader`` only for a text that holds a
``networking.istio.io`` document, so an agent without traffic rules never builds these
models (about 1 MiB of an idle agent, docs/dataplane.md Memory).

Reads the ``networking.istio.io/v1`` (and ``v1beta1``) documents of a policy file:
``DestinationRule`` and ``VirtualService``. Other documents of the same file belong to
``agent.rbac.loader``; the caller runs both and applies neither unless both succeed,
so any error rejects the whole file. Istio fields hostmesh does not carry out are
refused by name ("not supported"), never ignored; unknown fields are errors.
Never touches the registry or the running state: hosts resolve to service keys only.
"""

from __future__ import annotations

from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.traffic import hosts as hostnames
from agent.traffic import model as m
from agent.traffic.loader import TrafficError, duration_s, is_traffic

API_VERSIONS = ("networking.istio.io/v1", "networking.istio.io/v1beta1")
KINDS = ("DestinationRule", "VirtualService")
# Istio fields that exist but that hostmesh does not carry out: named in the error.
NOT_SUPPORTED = frozenset({
    "tls", "tunnel", "proxyProtocol", "consistentHash", "warmupDurationSecs", "warmup", "distribute",
    "failoverPriority", "tcpKeepalive", "maxConnectionDuration", "idleTimeout", "http1MaxPendingRequests",
    "http2MaxRequests", "maxRequestsPerConnection", "maxRetries", "minHealthPercent", "consecutiveErrors",
    "exportTo", "workloadSelector", "gateways", "redirect", "directResponse", "delegate", "rewrite", "fault",
    "mirror", "mirrors", "mirrorPercentage", "mirror_percent", "corsPolicy", "headers", "scheme", "authority",
    "sourceLabels", "queryParams", "ignoreUriCase", "withoutHeaders", "sourceNamespace", "statPrefix",
    "destinationSubnets", "retryRemoteLocalities", "retryIgnorePreviousHosts", "backoff", "regex",
    "useSourceIp", "httpHeaderName", "httpCookie", "ringHash", "maglev", "unhealthyMaxEjectionPercent",
})
RETRY_ON = frozenset({"connect-failure", "refused-stream", "reset", "5xx", "gateway-error", "retriable-status-codes",
                      "unavailable", "cancelled"})
class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Duration(_M):
    @field_validator("*", mode="before", check_fields=False)
    @classmethod
    def _d(cls, v, info):
        if info.field_name in getattr(cls, "DURATIONS", ()) and v is not None:
            s = duration_s(v)
            if s <= 0:
                raise ValueError(f"{v!r} must be more than 0")
            return s
        return v


class PortM(_M):
    number: int = Field(ge=1, le=65535)


class FailoverM(_M):
    from_: str = Field(alias="from", min_length=1)
    to: str = Field(min_length=1)


class LocalityM(_M):
    enabled: bool = True
    failover: list[FailoverM] = []


class LoadBalancerM(_M):
    simple: str | None = None
    localityLbSetting: LocalityM | None = None

    @field_validator("simple")
    @classmethod
    def _simple(cls, v: str | None) -> str | None:
        v = {"LEAST_CONN": "LEAST_REQUEST", "UNSPECIFIED": None}.get(v, v) if v else None
        if v is not None and v not in ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"):
            raise ValueError(f"{v!r} is not supported (ROUND_ROBIN, LEAST_REQUEST or RANDOM)")
        return v


class TcpPoolM(_Duration):
    DURATIONS: ClassVar[tuple[str, ...]] = ("connectTimeout",)
    maxConnections: int | None = Field(default=None, ge=1)
    connectTimeout: float | None = None


class PoolM(_M):
    tcp: TcpPoolM | None = None


class OutlierM(_Duration):
    DURATIONS: ClassVar[tuple[str, ...]] = ("interval", "baseEjectionTime")
    splitExternalLocalOriginErrors: bool = False
    consecutiveLocalOriginFailures: int | None = Field(default=None, ge=0)
    consecutiveGatewayErrors: int | None = Field(default=None, ge=0)
    consecutive5xxErrors: int | None = Field(default=None, ge=0)
    interval: float | None = None
    baseEjectionTime: float | None = None
    maxEjectionPercent: int | None = Field(default=None, ge=0, le=100)


class PolicyFieldsM(_M):
    loadBalancer: LoadBalancerM | None = None
    connectionPool: PoolM | None = None
    outlierDetection: OutlierM | None = None


class PortPolicyM(PolicyFieldsM):
    port: PortM


class PolicyM(PolicyFieldsM):
    portLevelSettings: list[PortPolicyM] = []


class SubsetM(_M):
    name: str = Field(min_length=1)
    labels: dict[str, str] = {}
    trafficPolicy: PolicyM | None = None


class DestinationRuleSpecM(_M):
    host: str
    trafficPolicy: PolicyM | None = None
    subsets: list[SubsetM] = []


class DestinationM(_M):
    host: str
    subset: str | None = None
    port: PortM | None = None


class RouteDestinationM(_M):
    destination: DestinationM
    weight: int | None = Field(default=None, ge=0)


class StringMatchM(_M):
    exact: str | None = None
    prefix: str | None = None


class HttpMatchM(_M):
    name: str | None = None
    uri: StringMatchM | None = None
    method: StringMatchM | None = None
    headers: dict[str, StringMatchM] = {}
    port: int | None = Field(default=None, ge=1, le=65535)


class RetriesM(_Duration):
    DURATIONS: ClassVar[tuple[str, ...]] = ("perTryTimeout",)
    attempts: int = Field(ge=0)
    perTryTimeout: float | None = None
    retryOn: str | None = None

    @field_validator("retryOn")
    @classmethod
    def _on(cls, v: str | None) -> str | None:
        for tok in (v or "").split(","):
            tok = tok.strip()
            if tok and tok not in RETRY_ON and not (tok.isdigit() and 100 <= int(tok) <= 599):
                raise ValueError(f"{tok!r} is not supported ({', '.join(sorted(RETRY_ON))} or a status code)")
        return v


class HttpRouteM(_Duration):
    DURATIONS: ClassVar[tuple[str, ...]] = ("timeout",)
    name: str | None = None
    match: list[HttpMatchM] = []
    route: list[RouteDestinationM] = Field(min_length=1)
    timeout: float | None = None
    retries: RetriesM | None = None


class TcpMatchM(_M):
    port: int | None = Field(default=None, ge=1, le=65535)


class TcpRouteM(_M):
    match: list[TcpMatchM] = []
    route: list[RouteDestinationM] = Field(min_length=1)


class VirtualServiceSpecM(_M):
    hosts: list[str] = Field(min_length=1)
    http: list[HttpRouteM] = []
    tcp: list[TcpRouteM] = []


class MetaM(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=253)
    namespace: str = "default"


class DocM(_M):
    apiVersion: str
    kind: str
    metadata: MetaM
    spec: dict[str, Any]
    status: dict | None = None

    @field_validator("apiVersion", "kind")
    @classmethod
    def _known(cls, v: str, info) -> str:
        allowed = API_VERSIONS if info.field_name == "apiVersion" else KINDS
        if v not in allowed:
            raise ValueError(f"{info.field_name} {v!r} is not supported ({' or '.join(allowed)})")
        return v


def _policy(p: PolicyFieldsM | None) -> m.TrafficPolicy | None:
    if p is None:
        return None
    lb = pool = outlier = None
    if p.loadBalancer is not None:
        loc = p.loadBalancer.localityLbSetting
        lb = m.LoadBalancer(p.loadBalancer.simple, None if loc is None or not loc.enabled else
                            m.Locality(True, tuple((f.from_, f.to) for f in loc.failover)))
    if p.connectionPool is not None and p.connectionPool.tcp is not None:
        pool = m.ConnectionPool(p.connectionPool.tcp.maxConnections, p.connectionPool.tcp.connectTimeout)
    if (o := p.outlierDetection) is not None:
        d = m.OutlierDetection()
        outlier = m.OutlierDetection(
            consecutive_5xx=d.consecutive_5xx if o.consecutive5xxErrors is None else (o.consecutive5xxErrors or None),
            consecutive_gateway=o.consecutiveGatewayErrors or None,
            # Istio: 5 by default, counted only when local-origin errors are split out
            consecutive_local_origin=(o.consecutiveLocalOriginFailures or None) if o.consecutiveLocalOriginFailures
            is not None else (5 if o.splitExternalLocalOriginErrors else None),
            split_local_origin=o.splitExternalLocalOriginErrors,
            interval_s=o.interval or d.interval_s,
            base_ejection_s=o.baseEjectionTime or d.base_ejection_s,
            max_ejection_percent=d.max_ejection_percent if o.maxEjectionPercent is None else o.maxEjectionPercent)
    return m.TrafficPolicy(lb, pool, outlier)


def _port_policies(p: PolicyM | None) -> tuple[tuple[int, m.TrafficPolicy], ...]:
    return tuple((pl.port.number, _policy(pl)) for pl in p.portLevelSettings) if p else ()


def _build_dr(meta: MetaM, spec: DestinationRuleSpecM, where, domain: str) -> m.DestinationRule:
    host = _host(spec.host, meta.namespace, domain, where, ("spec", "host"))
    seen: set[str] = set()
    subsets = []
    for i, s in enumerate(spec.subsets):
        if s.name in seen:
            raise _Bad(where(("spec", "subsets", i, "name")), f"spec.subsets[{i}].name: duplicate subset {s.name!r}")
        seen.add(s.name)
        subsets.append(m.Subset(s.name, tuple(sorted(s.labels.items())), _policy(s.trafficPolicy),
                                _port_policies(s.trafficPolicy)))
    return m.DestinationRule(meta.namespace, meta.name, host, _policy(spec.trafficPolicy),
                             _port_policies(spec.trafficPolicy), tuple(subsets))


def _dests(routes: list[RouteDestinationM], ns: str, domain: str, where, loc: tuple) -> tuple[m.Destination, ...]:
    if len(routes) > 1 and any(r.weight is None for r in routes):
        raise _Bad(where(loc), f"{_dotted(loc)}: every destination needs a weight when there are several")
    out = []
    for i, r in enumerate(routes):
        key = _host(r.destination.host, ns, domain, where, loc + (i, "destination", "host"))
        out.append(m.Destination(key, r.destination.subset, r.destination.port.number if r.destination.port else None,
                                 100 if r.weight is None else r.weight))
    if sum(d.weight for d in out) <= 0:
        raise _Bad(where(loc), f"{_dotted(loc)}: the weights add up to 0")
    return tuple(out)


def _sm(s: StringMatchM | None, where, loc: tuple) -> m.StringMatch | None:
    if s is None:
        return None
    given = [(k, v) for k, v in (("exact", s.exact), ("prefix", s.prefix)) if v is not None]
    if len(given) != 1:
        raise _Bad(where(loc), f"{_dotted(loc)}: give exactly one of exact or prefix")
    return m.StringMatch(*given[0])


def _build_vs(meta: MetaM, spec: VirtualServiceSpecM, where, domain: str) -> m.VirtualService:
    ns = meta.namespace
    keys = tuple(_host(h, ns, domain, where, ("spec", "hosts", i)) for i, h in enumerate(spec.hosts))
    tcp = tuple(m.TcpRoute(tuple(x.port for x in r.match if x.port is not None),
                           _dests(r.route, ns, domain, where, ("spec", "tcp", i, "route")))
                for i, r in enumerate(spec.tcp))
    http = []
    for i, r in enumerate(spec.http):
        loc = ("spec", "http", i)
        matches = tuple(m.HttpMatch(
            _sm(x.uri, where, loc + ("match", j, "uri")), _sm(x.method, where, loc + ("match", j, "method")),
            tuple(sorted((k.lower(), _sm(v, where, loc + ("match", j, "headers", k))) for k, v in x.headers.items())),
            x.port) for j, x in enumerate(r.match))
        retries: m.Retries | None = m.Retries()
        if r.retries is not None:
            on = frozenset(t.strip() for t in (r.retries.retryOn or "").split(",") if t.strip())
            retries = None if r.retries.attempts == 0 else m.Retries(
                r.retries.attempts, r.retries.perTryTimeout, on or m.Retries().retry_on)
        http.append(m.HttpRoute(r.name or f"http[{i}]", matches, _dests(r.route, ns, domain, where, loc + ("route",)),
                                r.timeout, retries))
    return m.VirtualService(ns, meta.name, keys, tcp, tuple(http))


class _Bad(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")


def _host(h: str, ns: str, domain: str, where, loc: tuple) -> m.ServiceKey:
    try:
        return hostnames.resolve_host(h, ns, domain)
    except ValueError as e:
        raise _Bad(where(loc), f"{_dotted(loc)}: {e}") from None


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _errors(doc, err: ValidationError, prefix: tuple = ()) -> list[str]:
    out = []
    for e in err.errors():
        loc = prefix + tuple(x for x in e["loc"] if x != "function-after")
        name = str(loc[-1]) if loc else ""
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "not supported by hostmesh (docs/traffic.md)" if name in NOT_SUPPORTED else "unknown field"
        out.append(f"{doc.where(loc)}: {_dotted(loc).replace('from_', 'from')}: {msg}")
    return out


def load(text: str, path: str, domain: str) -> list[m.Loaded]:
    """``loader.load_traffic`` once the text names networking.istio.io."""
    try:  # the native parser first; line numbers are worked out only for errors
        return _load(text, path, domain, lines=False)
    except (TrafficError, yaml.YAMLError, ValueError, TypeError):  # ryaml's errors are ValueErrors
        return _load(text, path, domain, lines=True)


def _load(text: str, path: str, domain: str, lines: bool) -> list[m.Loaded]:
    from agent.rbac.loader import _docs

    out, errors = [], []
    for doc in _docs(text, path, lines=lines):
        if not is_traffic(doc.data):
            continue
        try:
            d = DocM.model_validate(doc.data)
        except ValidationError as e:
            errors += _errors(doc, e)
            continue
        spec_model = DestinationRuleSpecM if d.kind == "DestinationRule" else VirtualServiceSpecM
        try:
            spec = spec_model.model_validate(d.spec)
            build = _build_dr if d.kind == "DestinationRule" else _build_vs
            out.append(m.Loaded(build(d.metadata, spec, doc.where, domain), doc.data))
        except ValidationError as e:
            errors += _errors(doc, e, prefix=("spec",))
        except _Bad as e:
            errors.append(str(e))
    if errors:
        raise TrafficError("\n".join(errors))
    return out
