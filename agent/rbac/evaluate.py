"""The decision to allow or deny a connection (or an HTTP request) at its destination.

Pure: attributes and the policy store in, a ``Decision`` out. Istio's evaluation order
(https://istio.io/latest/docs/concepts/security/#authorization-policies), applied in
``evaluate`` below:
  1. "If there are any DENY policies that match the request, deny the request."
  2. "If there are no ALLOW policies for the workload, allow the request."
  3. "If any of the ALLOW policies match the request, allow the request."
  4. "Deny the request."
AUDIT policies only mark the decision; dry-run policies (``istio.io/dry-run``) are
evaluated and reported, never enforced; CUSTOM is rejected by the loader.
HTTP attributes (methods, paths, hosts, request.headers) are known only when the
destination port is an HTTP port and the request is inspected; without them a rule
that needs them does not match (docs/policy.md).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from agent.rbac.model import AuthorizationPolicy, Condition, Operation, Rule, Source
from agent.rbac.store import PolicyStore


@dataclass(frozen=True)
class ConnAttrs:
    src_ip: str
    src_port: int
    src_principal: str | None  # "cluster.local/ns/a/sa/b" (no spiffe://), None without mTLS
    src_namespace: str | None
    dst_ip: str
    dst_port: int
    dst_namespace: str
    dst_labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpAttrs:
    method: str
    path: str
    host: str
    headers: dict[str, list[str]] = field(default_factory=dict)  # lower-case names


@dataclass(frozen=True)
class Decision:
    verdict: str  # "allow" | "deny"
    policy: str | None = None  # "ns/name" that decided, if one did
    reason: str = ""
    audit: bool = False
    audit_policy: str | None = None
    dry_run_matches: tuple[str, ...] = ()


def match_string(pattern: str, value: str | None) -> bool:
    """Istio string match: exact, prefix ``abc*``, suffix ``*abc``, presence ``*``."""
    if value is None:
        return False
    if pattern == "*":
        return value != ""
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def _any(patterns, value) -> bool:
    return any(match_string(p, value) for p in patterns)


def _principal(p: str) -> str:
    return p.removeprefix("spiffe://")


def _any_principal(patterns, value) -> bool:
    return any(match_string(_principal(p), value) for p in patterns)


def _in_blocks(blocks, ip: str) -> bool:
    a = ipaddress.ip_address(ip)
    return any(a.version == b.version and a in b for b in blocks)


def _sa(c: ConnAttrs) -> str | None:
    if not c.src_principal:
        return None
    parts = c.src_principal.split("/")
    return f"{parts[2]}/{parts[4]}" if len(parts) >= 5 else None


def _source(s: Source, c: ConnAttrs) -> bool:
    if s.principals and not _any_principal(s.principals, c.src_principal):
        return False
    if s.not_principals and _any_principal(s.not_principals, c.src_principal):
        return False
    if s.namespaces and not _any(s.namespaces, c.src_namespace):
        return False
    if s.not_namespaces and _any(s.not_namespaces, c.src_namespace):
        return False
    if s.service_accounts and not _any(s.service_accounts, _sa(c)):
        return False
    if s.not_service_accounts and _any(s.not_service_accounts, _sa(c)):
        return False
    if s.ip_blocks and not _in_blocks(s.ip_blocks, c.src_ip):
        return False
    if s.not_ip_blocks and _in_blocks(s.not_ip_blocks, c.src_ip):
        return False
    return True


def _host(h: str) -> str:
    h = h.lower()
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _operation(o: Operation, c: ConnAttrs, r: HttpAttrs | None) -> bool:
    if o.ports and c.dst_port not in o.ports:
        return False
    if o.not_ports and c.dst_port in o.not_ports:
        return False
    if o.is_http and r is None:
        return False  # cannot be known at L4
    if r is not None:
        if o.methods and not _any(o.methods, r.method):
            return False
        if o.not_methods and _any(o.not_methods, r.method):
            return False
        if o.paths and not _any(o.paths, r.path):
            return False
        if o.not_paths and _any(o.not_paths, r.path):
            return False
        host = _host(r.host)
        if o.hosts and not any(match_string(p.lower(), host) or match_string(p.lower(), r.host.lower()) for p in o.hosts):
            return False
        if o.not_hosts and any(match_string(p.lower(), host) for p in o.not_hosts):
            return False
    return True


def _cond_values(k: Condition, c: ConnAttrs, r: HttpAttrs | None) -> list[str] | None:
    key = k.key
    if key in ("source.ip", "remote.ip"):
        return [c.src_ip]
    if key == "source.namespace":
        return [c.src_namespace] if c.src_namespace else []
    if key == "source.principal":
        return [c.src_principal] if c.src_principal else []
    if key == "destination.ip":
        return [c.dst_ip]
    if key == "destination.port":
        return [str(c.dst_port)]
    if key == "destination.namespace":
        return [c.dst_namespace]
    if key.startswith("request.headers["):
        if r is None:
            return None
        return r.headers.get(key[16:-1].lower(), [])
    return []


def _cond_match(pattern: str, key: str, value: str) -> bool:
    if key in ("source.ip", "remote.ip", "destination.ip"):
        try:
            return _in_blocks([ipaddress.ip_network(pattern, strict=False)], value)
        except ValueError:
            return False
    if key == "source.principal":
        return match_string(_principal(pattern), value)
    return match_string(pattern, value)


def _condition(k: Condition, c: ConnAttrs, r: HttpAttrs | None) -> bool:
    vals = _cond_values(k, c, r)
    if vals is None:
        return False
    if k.values and not any(_cond_match(p, k.key, v) for p in k.values for v in vals):
        return False
    if k.not_values and any(_cond_match(p, k.key, v) for p in k.not_values for v in vals):
        return False
    return True


def rule_matches(rule: Rule, c: ConnAttrs, r: HttpAttrs | None) -> bool:
    # Istio: a rule matches when any `from` matches, any `to` matches and every `when`.
    if rule.sources and not any(_source(s, c) for s in rule.sources):
        return False
    if rule.operations and not any(_operation(o, c, r) for o in rule.operations):
        return False
    return all(_condition(k, c, r) for k in rule.conditions)


def policy_matches(p: AuthorizationPolicy, c: ConnAttrs, r: HttpAttrs | None) -> bool:
    # A policy without rules matches nothing: `spec: {}` as ALLOW therefore allows nothing.
    return any(rule_matches(rule, c, r) for rule in p.rules)


def evaluate(store: PolicyStore, c: ConnAttrs, r: HttpAttrs | None = None) -> Decision:
    a = store.applicable(c.dst_namespace, c.dst_labels)
    dry = tuple(p.ref for p in a.dry_run if policy_matches(p, c, r))
    audit = next((p for p in a.audit if policy_matches(p, c, r)), None)
    extra = {"audit": audit is not None, "audit_policy": audit.ref if audit else None, "dry_run_matches": dry}
    # 1. "If there are any DENY policies that match the request, deny the request."
    for p in a.deny:
        if policy_matches(p, c, r):
            return Decision("deny", p.ref, "denied by DENY policy", **extra)
    # 2. "If there are no ALLOW policies for the workload, allow the request."
    if not a.allow:
        return Decision("allow", None, "no ALLOW policy applies", **extra)
    # 3. "If any of the ALLOW policies match the request, allow the request."
    for p in a.allow:
        if policy_matches(p, c, r):
            return Decision("allow", p.ref, "allowed by ALLOW policy", **extra)
    # 4. "Deny the request."
    return Decision("deny", None, "no ALLOW policy matched", **extra)


def needs_http(store: PolicyStore, namespace: str, labels: dict[str, str], port: int, http_ports) -> bool:
    return port in http_ports and store.applicable(namespace, labels).http


def mtls_mode(store: PolicyStore, namespace: str, labels: dict[str, str], port: int) -> str:
    """PeerAuthentication: workload selector beats namespace beats root namespace; a
    port-level mode beats the policy's own; default PERMISSIVE (Istio's)."""
    best, rank = None, -1
    for pa in store.peer_authentications():
        if pa.selector is not None:
            if pa.namespace != namespace or not all(labels.get(k) == v for k, v in pa.selector):
                continue
            r = 3
        elif pa.namespace == namespace:
            r = 2
        elif pa.namespace == store.root_namespace:
            r = 1
        else:
            continue
        if r > rank:
            best, rank = pa, r
    if best is None:
        return "PERMISSIVE"
    mode = dict(best.port_modes).get(port) or best.mode
    return "PERMISSIVE" if mode in ("UNSET", "DISABLE") else mode
