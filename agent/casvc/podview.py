"""The CA service's view in Kubernetes mode, from pods in the API: which identities
have a running pod on which node, and which node each running pod (name, UID) is on.
Pure: pod objects and watch events in, the view out; ``kube`` does the HTTP.

A pod counts once it is scheduled (``spec.nodeName``) and not finished (phase neither
Succeeded nor Failed), as istiod's node authorizer counts it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    uid: str
    service_account: str
    node: str


def pod_of(obj: Mapping) -> Pod | None:
    """A pod object -> Pod, None when it does not place an identity on a node."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    node = spec.get("nodeName")
    if not node or status.get("phase") in ("Succeeded", "Failed") or meta.get("deletionTimestamp"):
        return None
    return Pod(meta.get("name", ""), meta.get("namespace", "default"), meta.get("uid", ""),
               spec.get("serviceAccountName") or "default", node)


def apply_event(pods: dict[str, Pod], event: Mapping) -> None:
    """One watch event (ADDED / MODIFIED / DELETED) applied to ``pods`` (by UID)."""
    obj = event.get("object") or {}
    uid = (obj.get("metadata") or {}).get("uid")
    if not uid:
        return
    p = pod_of(obj) if event.get("type") in ("ADDED", "MODIFIED") else None
    if p is None:
        pods.pop(uid, None)
    else:
        pods[uid] = p


def view(pods: Mapping[str, Pod], trust_domain: str) -> tuple[dict[str, frozenset[str]], dict[tuple[str, str], str]]:
    """(node -> SPIFFE IDs with a pod there, (pod name, UID) -> node)."""
    on: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for p in pods.values():
        on.setdefault(p.node, set()).add(f"spiffe://{trust_domain}/ns/{p.namespace}/sa/{p.service_account}")
        where[(p.name, p.uid)] = p.node
    return {n: frozenset(ids) for n, ids in on.items()}, where
