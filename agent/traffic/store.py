"""The traffic rules in force, indexed by the service they name. Pure state.

Fed like the policy store: each file, admin API call or the Kubernetes watch is a
``source``, and re-reading a source replaces what it had. Lookups follow Istio's
precedence for a DestinationRule: the client's namespace, then the service's, then
the root namespace, then any other (first by name). A VirtualService is looked up by
the service it names in ``hosts``; two for one host: the first by namespace/name wins
(Istio merges only on gateways), and the dump says which was shadowed.
"""

from __future__ import annotations

from agent.traffic.model import DestinationRule, Loaded, ServiceKey, VirtualService


class TrafficStore:
    def __init__(self, root_namespace: str = "istio-system", domain: str = "cluster.local") -> None:
        self.root_namespace = root_namespace
        self.domain = domain
        self._docs: dict[tuple[str, str, str], tuple[Loaded, str]] = {}  # (kind, ns, name) -> (doc, source)
        self._dr: dict[ServiceKey, list[DestinationRule]] = {}
        self._vs: dict[ServiceKey, list[VirtualService]] = {}
        self.generation = 0
        self.on_change: list = []  # called after every rebuild (agent/proxy/repeat.py)

    def _rebuild(self) -> None:
        self._dr, self._vs = {}, {}
        for _key, (loaded, _src) in sorted(self._docs.items()):
            d = loaded.doc
            if isinstance(d, DestinationRule):
                self._dr.setdefault(d.host, []).append(d)
            else:
                for h in d.hosts:
                    self._vs.setdefault(h, []).append(d)
        self.generation += 1
        for f in self.on_change:
            f()

    def apply(self, docs: list[Loaded], source: str) -> None:
        for d in docs:
            self._docs[(d.doc.kind, d.doc.namespace, d.doc.name)] = (d, source)
        self._rebuild()

    def replace_source(self, source: str, docs: list[Loaded]) -> None:
        self._docs = {k: v for k, v in self._docs.items() if v[1] != source}
        self.apply(docs, source)

    def delete(self, namespace: str, name: str) -> bool:
        keys = [k for k in self._docs if k[1] == namespace and k[2] == name]
        for k in keys:
            del self._docs[k]
        if keys:
            self._rebuild()
        return bool(keys)

    def sources(self) -> dict[str, list[dict]]:
        """Every source with its documents as the operator wrote them (for workers)."""
        out: dict[str, list[dict]] = {}
        for _key, (loaded, source) in sorted(self._docs.items()):
            out.setdefault(source, []).append(loaded.source)
        return out

    def __len__(self) -> int:
        return len(self._docs)

    def applies(self, host: ServiceKey) -> bool:
        return host in self._dr or host in self._vs

    def destination_rule(self, host: ServiceKey, client_ns: str | None) -> DestinationRule | None:
        rules = self._dr.get(host)
        if not rules:
            return None
        for ns in (client_ns, host[0], self.root_namespace):
            for r in rules:
                if r.namespace == ns:
                    return r
        return rules[0]

    def virtual_service(self, host: ServiceKey) -> VirtualService | None:
        rules = self._vs.get(host)
        return rules[0] if rules else None

    def list(self) -> list[dict]:
        out = []
        for (kind, ns, name), (loaded, source) in sorted(self._docs.items()):
            d = loaded.doc
            row = {"kind": kind, "namespace": ns, "name": name, "source": source}
            if isinstance(d, VirtualService):
                row["hosts"] = [f"{h[0]}/{h[1]}" for h in d.hosts]
                row["shadowed_by"] = sorted({f"{w.namespace}/{w.name}" for h in d.hosts
                                             if (w := self.virtual_service(h)) is not None and w is not d})
            else:
                row["host"] = f"{d.host[0]}/{d.host[1]}"
                row["subsets"] = [s.name for s in d.subsets]
            out.append(row)
        return out
