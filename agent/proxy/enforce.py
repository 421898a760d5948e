"""Authorization at the destination: the bridge from a connection to the policy engine.

Builds the attributes the pure engine (``agent.rbac.evaluate``) needs from a ``Conn``
and counts the outcome. It decides nothing itself. SPEC.md: evaluation happens at the
destination — the tunnel listener (identity from the client certificate), plaintext
inbound (no identity) and the local same-node path.
"""

from __future__ import annotations

import logging

from agent.proxy.conns import Conn
from agent.rbac.evaluate import ConnAttrs, Decision, HttpAttrs, evaluate, mtls_mode, needs_http
from agent.rbac.matchers import principal_namespace

logger = logging.getLogger("hostmesh.policy")


_NO_LABELS: dict[str, str] = {}


def attrs(conn: Conn) -> ConnAttrs:
    dst = conn.dst
    principal = conn.src_principal.removeprefix("spiffe://") if conn.src_principal else None
    return ConnAttrs(
        src_ip=conn.src_ip,
        src_port=conn.src_port,
        src_principal=principal,
        # Istio / ztunnel: the source namespace is the verified identity's, never the
        # registry entry of an address a peer claims (issue 15, item 1)
        src_namespace=principal_namespace(principal),
        dst_ip=conn.dst_ip,
        dst_port=conn.dst_port,
        dst_namespace=dst.namespace if dst else "",
        # the workload's own mapping, not a copy: workloads are immutable, and the policy
        # store keys its per-workload cache on this object (agent.rbac.store.applicable)
        dst_labels=dst.labels if dst else _NO_LABELS,
    )


def decide(agent, conn: Conn, request: HttpAttrs | None = None) -> Decision:
    d = evaluate(agent.policies, attrs(conn), request)
    note(agent, conn, d, request)
    return d


def note(agent, conn: Conn, d: Decision, request: HttpAttrs | None, n: int = 1) -> None:
    """Count and log a decision (and mark the connection with it) as each evaluation
    is: also a decision the core reused for a request (``reusable``), at its exchange
    (``n``: that many of its exchanges at once, as ``n`` calls would)."""
    agent.count(f"policy_decisions_{d.verdict}", n)
    # the metric counts the same decisions as the event counter (one per evaluation,
    # where it is made), not finished-connection records (two for a same-node connection)
    tel = getattr(agent, "telemetry", None)
    if tel is not None:
        tel.metrics.inc("hostmesh_policy_decisions_total", (d.verdict, d.policy or "-"), n)
    if getattr(d, "audit", False):
        agent.count("policy_decisions_audit", n)
    for name in getattr(d, "dry_run_matches", ()) or ():
        agent.count("policy_dry_run_matches", n)
        logger.info("dry-run policy matched", extra={"policy": name, "conn": conn.id})
    if conn.enforced_here or request is None:
        conn.verdict = "audit" if d.verdict == "allow" and getattr(d, "audit", False) else d.verdict
        conn.policy, conn.reason = d.policy, d.reason
    if d.verdict == "deny":
        logger.info(
            "denied",
            extra={"src": f"{conn.src_ip}:{conn.src_port}", "dst": f"{conn.dst_ip}:{conn.dst_port}",
                   "principal": conn.src_principal, "policy": d.policy, "reason": d.reason},
        )


def reusable(agent, conn: Conn, d: Decision) -> bool:
    """Whether the core may apply request decision ``d`` again to this connection's later
    heads with the same method, target, version, Host and framing (dataplane/src/l7memo.rs)
    under the same policies: a plain allow (no audit, no dry-run match to log), and no
    applicable policy reads a request header (the key holds no other field)."""
    if d.verdict != "allow" or d.audit or d.dry_run_matches:
        return False
    a = attrs(conn)  # the same workload key the decision used (mesh-wide policies apply without one)
    return not agent.policies.applicable(a.dst_namespace, a.dst_labels).reads_headers


def inspect_http(agent, conn: Conn) -> bool:
    """True when requests on this connection must be checked one by one (L7). The
    workload's own labels mapping goes to the store (its per-workload cache is keyed on
    that object; a copy per call would fill it with entries that never hit)."""
    dst = conn.dst
    if dst is None or conn.dst_port not in dst.http_ports:
        return False
    return needs_http(agent.policies, dst.namespace, dst.labels, conn.dst_port, dst.http_ports)


def strict_mtls(agent, conn: Conn) -> bool:
    dst = conn.dst
    if dst is None:
        return False
    return mtls_mode(agent.policies, dst.namespace, dst.labels, conn.dst_port) == "STRICT"


def recheck(agent, conn: Conn) -> Decision | None:
    """A live connection this node enforces, evaluated again under the current policies."""
    if not conn.enforced_here or inspect_http(agent, conn):
        return None  # an inspected connection's requests are each judged as they come
    return evaluate(agent.policies, attrs(conn), None)
