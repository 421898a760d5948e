"""The policies in force, indexed so a decision only looks at the policies that apply
to its workload. Pure state; the admin API, the policy directory and Kubernetes feed
it. Each file or API call is a ``source``; re-reading a source replaces what it had."""

from __future__ import annotations

from dataclasses import dataclass

from agent.rbac.matchers import Matcher, compile_policy
from agent.rbac.model import AuthorizationPolicy, PeerAuthentication

Doc = AuthorizationPolicy | PeerAuthentication


@dataclass(frozen=True)
class Applicable:
    """The AuthorizationPolicies that apply to one workload, split by action, each as
    ``(ref, matcher)`` (``agent.rbac.matchers``) in a stable order."""

    deny: tuple[tuple[str, Matcher], ...]
    allow: tuple[tuple[str, Matcher], ...]
    audit: tuple[tuple[str, Matcher], ...]
    dry_run: tuple[tuple[str, Matcher], ...]
    http: bool  # some applicable rule needs HTTP attributes


# Distinct (namespace, labels) sets whose applicable policies are cached; beyond this
# the cache is cleared (workload churn must not grow memory without bound).
INDEX_MAX = 65536


class PolicyStore:
    def __init__(self, root_namespace: str = "istio-system") -> None:
        self.root_namespace = root_namespace
        self._docs: dict[tuple[str, str, str], tuple[Doc, str]] = {}  # (kind, ns, name) -> (doc, source)
        self._by_ns: dict[str, list[AuthorizationPolicy]] = {}
        self._peer: list[PeerAuthentication] = []
        self._index: dict[tuple, Applicable] = {}
        self._compiled: dict[int, tuple[str, Matcher]] = {}  # id(policy) -> (ref, matcher)
        self._by_obj: dict[tuple[str, int], tuple[object, Applicable]] = {}
        self.generation = 0

    def _rebuild(self) -> None:
        self._by_ns = {}
        self._peer = []
        for doc, _ in self._docs.values():
            if isinstance(doc, AuthorizationPolicy):
                self._by_ns.setdefault(doc.namespace, []).append(doc)
            else:
                self._peer.append(doc)
        self._index.clear()
        self._by_obj.clear()
        self._compiled.clear()
        self.generation += 1

    def apply(self, docs: list[Doc], source: str) -> None:
        for d in docs:
            self._docs[(d.kind, d.namespace, d.name)] = (d, source)
        self._rebuild()

    def replace_source(self, source: str, docs: list[Doc]) -> None:
        self._docs = {k: v for k, v in self._docs.items() if v[1] != source}
        self.apply(docs, source)

    def sources(self) -> dict[str, list[Doc]]:
        """Every source (a file, ``admin-api``, ``kubernetes``...) with its documents."""
        out: dict[str, list[Doc]] = {}
        for _key, (doc, source) in sorted(self._docs.items()):
            out.setdefault(source, []).append(doc)
        return out

    def delete(self, namespace: str, name: str) -> bool:
        keys = [k for k in self._docs if k[1] == namespace and k[2] == name]
        for k in keys:
            del self._docs[k]
        if keys:
            self._rebuild()
        return bool(keys)

    def __len__(self) -> int:
        return len(self._docs)

    def list(self) -> list[dict]:
        out = []
        for (kind, ns, name), (doc, source) in sorted(self._docs.items()):
            item = {"kind": kind, "namespace": ns, "name": name, "source": source}
            if isinstance(doc, AuthorizationPolicy):
                item.update(action=doc.action, dry_run=doc.dry_run, rules=len(doc.rules),
                            selector=dict(doc.selector) if doc.selector is not None else None)
            else:
                item.update(mode=doc.mode, selector=dict(doc.selector) if doc.selector is not None else None,
                            port_modes={str(p): m for p, m in doc.port_modes})
            out.append(item)
        return out

    @staticmethod
    def _selects(selector, labels: dict[str, str]) -> bool:
        return selector is None or all(labels.get(k) == v for k, v in selector)

    def applicable(self, namespace: str, labels: dict[str, str]) -> Applicable:
        # Fast path: a workload's labels are one long-lived mapping, so its identity is a
        # key (the entry holds the mapping, so the id cannot be reused while cached).
        hit = self._by_obj.get((namespace, id(labels)))
        if hit is not None and hit[0] is labels:
            return hit[1]
        a = self._applicable(namespace, labels)
        if len(self._by_obj) >= INDEX_MAX:
            self._by_obj.clear()
        self._by_obj[(namespace, id(labels))] = (labels, a)
        return a

    def _applicable(self, namespace: str, labels: dict[str, str]) -> Applicable:
        key = (namespace, tuple(sorted(labels.items())))
        hit = self._index.get(key)
        if hit is not None:
            return hit
        pols = [p for ns in {namespace, self.root_namespace} for p in self._by_ns.get(ns, ())
                if self._selects(p.selector, labels)]
        enforced = [p for p in pols if not p.dry_run]
        m = self._matcher
        a = Applicable(
            deny=tuple(m(p) for p in enforced if p.action == "DENY"),
            allow=tuple(m(p) for p in enforced if p.action == "ALLOW"),
            audit=tuple(m(p) for p in enforced if p.action == "AUDIT"),
            dry_run=tuple(m(p) for p in pols if p.dry_run),
            http=any(r.is_http for p in pols for r in p.rules),
        )
        if len(self._index) >= INDEX_MAX:
            self._index.clear()
        self._index[key] = a
        return a

    def _matcher(self, p: AuthorizationPolicy) -> tuple[str, Matcher]:
        """Compiled once per store generation, shared by every workload it applies to."""
        hit = self._compiled.get(id(p))
        if hit is None:
            hit = self._compiled[id(p)] = (p.ref, compile_policy(p))
        return hit

    def peer_authentications(self) -> list[PeerAuthentication]:
        return self._peer
