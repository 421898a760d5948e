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
destination port is an HTTP port and the request is inspected; without them an ALLOW
rule that needs them does not match, and a DENY rule counts them as matching (Istio's
TCP rule: fail closed; docs/policy.md "Matching details").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.rbac.matchers import match_string  # noqa: F401 - re-exported: the string-matching API
from agent.rbac.store import PolicyStore


@dataclass(slots=True)
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


@dataclass(slots=True)
class Decision:
    verdict: str  # "allow" | "deny"
    policy: str | None = None  # "ns/name" that decided, if one did
    reason: str = ""
    audit: bool = False
    audit_policy: str | None = None
    dry_run_matches: tuple[str, ...] = ()


def evaluate(store: PolicyStore, c: ConnAttrs, r: HttpAttrs | None = None) -> Decision:
    a = store.applicable(c.dst_namespace, c.dst_labels)
    dry = tuple(ref for ref, m in a.dry_run if m(c, r)) if a.dry_run else ()
    audit = next((ref for ref, m in a.audit if m(c, r)), None) if a.audit else None
    # 1. "If there are any DENY policies that match the request, deny the request."
    for ref, m in a.deny:
        if m(c, r):
            return Decision("deny", ref, "denied by DENY policy", audit is not None, audit, dry)
    # 2. "If there are no ALLOW policies for the workload, allow the request."
    if not a.allow:
        return Decision("allow", None, "no ALLOW policy applies", audit is not None, audit, dry)
    # 3. "If any of the ALLOW policies match the request, allow the request."
    for ref, m in a.allow:
        if m(c, r):
            return Decision("allow", ref, "allowed by ALLOW policy", audit is not None, audit, dry)
    # 4. "Deny the request."
    return Decision("deny", None, "no ALLOW policy matched", audit is not None, audit, dry)


def needs_http(store: PolicyStore, namespace: str, labels: dict[str, str], port: int, http_ports) -> bool:
    return port in http_ports and store.applicable(namespace, labels).http


def mtls_mode(store: PolicyStore, namespace: str, labels: dict[str, str], port: int) -> str:
    """PeerAuthentication (Istio's reference): the workload's policy (selector), then the
    namespace's, then the root namespace's; within one, a port-level mode beats the
    policy's own. ``UNSET`` inherits from the next level; with nothing set, PERMISSIVE.
    DISABLE is PERMISSIVE here (plaintext is accepted either way)."""
    levels: list = [None, None, None]  # workload, namespace, root
    for pa in store.peer_authentications():
        if pa.selector is not None:
            if pa.namespace == namespace and all(labels.get(k) == v for k, v in pa.selector):
                levels[0] = levels[0] or pa
        elif pa.namespace == namespace:
            levels[1] = levels[1] or pa
        elif pa.namespace == store.root_namespace:
            levels[2] = levels[2] or pa
    for pa in levels:
        if pa is None:
            continue
        mode = dict(pa.port_modes).get(port, "UNSET")
        if mode == "UNSET":
            mode = pa.mode
        if mode != "UNSET":
            return "PERMISSIVE" if mode == "DISABLE" else mode
    return "PERMISSIVE"
