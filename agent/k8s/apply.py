"""Carrying discovery's changes (``agent.k8s.index.Changes``) into the running agent:
workloads through ``Agent.register``/``unregister``, services as a patch of the
routing view, peers, policies one document at a time.

Every step is proportional to the change: a plan covers the uids that changed (in
batches, so the shell can let the event loop run between them), a slice change
re-validates its service's entries only (an entry whose endpoints alone changed keeps
what it validated to, with the new endpoints) and patches those routing-view entries, a
policy change loads that policy only. It must never rebuild what a change did not
touch, nor unregister a workload discovery did not register.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
from collections.abc import Iterator

from agent.k8s.index import Changes, Index
from agent.k8s.model import TRAFFIC_KINDS
from agent.k8s.reconcile import merge_nodes, merge_services, plan_changes

logger = logging.getLogger("hostmesh.k8s")

# uids planned and registered per step; the shell yields to the event loop between steps
BATCH = 200
LOGGED_MAX = 10000  # lines remembered so each is logged once (bounded)


_LOADERS: list = []  # (rbac.loader, traffic.loader) once a policy event came


def _loaders() -> tuple:
    """The policy and traffic loaders, imported at the first policy event (an agent
    whose cluster has none never loads them) and kept: two import statements cost
    ~25 us of a policy event's CPU on a cold cache (docs/kubernetes.md)."""
    if not _LOADERS:
        from agent.rbac import loader
        from agent.traffic import loader as traffic

        _LOADERS[:] = [loader, traffic]
    rbac, traffic = _LOADERS
    return rbac.load_object, rbac.stand_in, traffic.load_traffic


class Applier:
    def __init__(self, agent, node: str, count) -> None:
        self.agent = agent
        self.node = node
        self.count = count
        self.owned: set[str] = set()  # workload uids discovery registered
        self.retry: dict[str, dict] = {}  # uid -> body an address held elsewhere kept out: tried again
        self.services: dict[str, list] = {}  # service key -> its validated ServiceConfig entries
        self._flat: dict[tuple[str, int], object] = {}  # the same entries, flat: (key, i) -> ServiceConfig
        self._made: dict[str, list[tuple[dict, object]]] = {}  # service key -> (entry, what it validated to)
        # cluster.services as last merged (the config's, then _flat's in order), the
        # entries replaced in place since (None: a merge is due) and their places
        self._merged: list | None = None
        self._patch: list | None = None
        self._at: dict | None = None
        self.nodes: list = []  # validated PeerNode entries
        self.policies: dict[tuple[str, str], list] = {}  # (kind, key) -> loaded documents
        self.traffic: dict[tuple[str, str], list] = {}  # (kind, key) -> DestinationRule/VirtualService
        self.policies_dirty = 0  # security.istio.io objects loaded but not yet in force (0: none)
        self.traffic_dirty = False  # a DestinationRule/VirtualService loaded but not yet in force
        # what changed in the source since the last commit, in order: (kind, namespace,
        # name) -> the new document or None (gone, or rejected); put in force in place
        # (PolicyStore.prepare_change), or as the whole source when the store refuses
        self.replaced: list[tuple[tuple[str, str, str], object]] = []
        cluster = agent.config.cluster
        self.static = (list(cluster.nodes), list(cluster.services))  # the config's own
        self._logged: set[str] = set()

    def _once(self, line: str) -> bool:
        if line in self._logged:
            return False
        if len(self._logged) >= LOGGED_MAX:
            self._logged.clear()
        self._logged.add(line)
        return True

    def steps(self, index: Index, c: Changes, *, remerge: bool = False) -> Iterator[None]:
        """Apply ``c``; yields between batches (the caller decides whether to let the
        event loop run there)."""
        changes = {**self.retry, **c.workloads}
        uids = sorted(changes)
        for i in range(0, len(uids), BATCH):
            self._workloads({u: changes[u] for u in uids[i:i + BATCH]})
            yield
        if index.conflicts:
            for line in sorted(index.all_conflicts()):
                if self._once(line):
                    logger.warning("%s; the newer pod keeps it", line)
        if c.nodes or remerge:
            self._nodes(index)
            remerge = True
        delta = self._services(index, c.services) if c.services else {}
        if remerge or delta:
            self._cluster(delta, full=remerge)
        yield
        if c.policies:
            self._policies(index, c.policies)

    def _workloads(self, changes: dict[str, dict | None]) -> None:
        a = self.agent
        plan = plan_changes(changes, self.owned, a.registry, self.node)
        for uid in plan.unregister:
            a.unregister(uid)
        gained = set(plan.gained)
        for w in plan.register:
            try:
                a.register(w)
            except Exception as e:  # noqa: BLE001 - one pod (e.g. its capture) must not stop the rest
                if a.registry.get(w.uid) is None:
                    gained.discard(w.uid)
                plan.skipped.append(f"{w.namespace}/{w.name}: {type(e).__name__}: {e}")
        for s in plan.skipped:  # each once, not on every retry
            if self._once(s):
                self.count("pods_skipped")
                logger.warning("pod %s: skipped", s)
        self.owned -= plan.lost
        self.owned |= gained
        for uid in changes:
            self.retry.pop(uid, None)
        self.retry.update({uid: changes[uid] for uid in plan.failed if changes.get(uid) is not None})

    def _nodes(self, index: Index) -> None:
        from agent.config import PeerNode

        out = []
        peers, me = index.nodes()
        cluster = self.agent.config.cluster
        if me and me.get("pod_cidrs") and not cluster.pod_cidrs:
            cluster.pod_cidrs = list(me["pod_cidrs"])
        if me and me.get("labels"):
            self.agent.config.node.labels = dict(me["labels"])  # locality (docs/traffic.md)
        for entry in peers:
            try:
                out.append(PeerNode.from_obj(entry))
            except ValueError as err:
                logger.warning("node %s skipped: %s", entry.get("name"), err)
        self.nodes = out

    def _services(self, index: Index, keys: set[str]) -> dict:
        """Re-validate the entries of the services in ``keys``; the routing-view entries
        ((vip, port) -> ServiceConfig, None: gone) that differ."""
        from agent.config import ServiceConfig

        delta: dict = {}
        for key in sorted(keys):
            new, made = [], []
            entries = index.service_entries(key)
            was = self._made.get(key, ())
            same = len(was) == len(entries)  # the entries in place, as validated last time
            for i, entry in enumerate(entries):
                svc = _endpoints_changed(was[i], entry) if same else None
                if svc is None:
                    try:
                        svc = ServiceConfig.from_obj(entry)
                    except ValueError as err:
                        logger.warning("service %s/%s skipped: %s", entry.get("namespace"), entry.get("name"), err)
                        same = False
                        continue
                new.append(svc)
                made.append((entry, svc))
            if made:
                self._made[key] = made
            else:
                self._made.pop(key, None)
            old = self.services.get(key, [])
            if new == old:
                continue
            if len(new) == len(old) and all(a.vip == b.vip and a.ports == b.ports for a, b in zip(old, new)):
                # the same entries with other endpoints (a slice's readiness): in place,
                # so cluster.services is patched at their places (_cluster)
                self.services[key] = new
                for i, svc in enumerate(new):
                    self._flat[(key, i)] = svc
                if self._patch is not None:
                    self._patch += [((key, i), svc) for i, svc in enumerate(new)]
            else:
                self.services.pop(key, None)
                for i in range(len(old)):
                    del self._flat[(key, i)]
                if new:
                    self.services[key] = new
                    self._flat.update(((key, i), svc) for i, svc in enumerate(new))
                self._patch = None  # entries came, went or moved: merged again
            for s in old:
                delta.update(dict.fromkeys((s.vip, p) for p in s.ports))
            for s in new:
                delta.update({(s.vip, p): s for p in s.ports})
        return delta

    def _cluster(self, delta: dict, *, full: bool) -> None:
        cluster = self.agent.config.cluster
        if full:
            cluster.nodes = merge_nodes(self.static[0], self.nodes)
        if full or self._patch is None or cluster.services is not self._merged:
            cluster.services = self._merged = merge_services(self.static[1], self._flat.values())
            self._at = None
        elif self._patch:  # O(change): the changed entries replaced where they stand
            if self._at is None:  # (key, i) -> its place in the merged list, once per merge
                offset = len(self._merged) - len(self._flat)  # the config's services come first
                self._at = {k: offset + n for n, k in enumerate(self._flat)}
            for k, svc in self._patch:
                self._merged[self._at[k]] = svc
        self._patch = []
        if full:
            self.agent.cluster_changed()
            return
        static = {(s.vip, p): s for s in self.static[1] for p in s.ports}
        self.agent.cluster_changed({k: s if s is not None else static.get(k) for k, s in delta.items()})

    def _policies(self, index: Index, keys: set[tuple[str, str]]) -> None:
        """Load the changed objects only (one small document each); the whole set is
        put in force by the shell: ``commit_policies`` now, or ``Discovery.flush``
        beside the deciding thread (agent.policy_sources)."""
        load_object, stand_in, load_traffic = _loaders()
        cfg = self.agent.config.policies
        for kind, key in sorted(keys):
            doc = index.policy_doc(kind, key)
            old = self.policies.pop((kind, key), None)
            self.traffic.pop((kind, key), None)
            self.replaced += [((d.kind, d.namespace, d.name), None) for d in old or ()]
            if doc is None:
                continue
            m = doc["metadata"]
            where = f"kubernetes:{doc['kind']}/{m.get('namespace')}/{m.get('name')}"
            try:
                if kind in TRAFFIC_KINDS:
                    self.traffic[(kind, key)] = load_traffic(json.dumps(doc), where, cfg.cluster_domain)
                else:
                    new = self.policies[(kind, key)] = load_object(doc, where, cfg.root_namespace)
                    self.replaced += [((d.kind, d.namespace, d.name), d) for d in new]
            except ValueError as e:  # PolicyError, TrafficError
                self.count("policies_rejected")
                held = stand_in(doc, where, cfg.root_namespace) if kind in FAIL_CLOSED_KINDS else []
                if held:  # fail closed: never less than the operator wrote (docs/kubernetes.md)
                    self.count("policies_fail_closed")
                    self.policies[(kind, key)] = held
                    self.replaced += [((d.kind, d.namespace, d.name), d) for d in held]
                    logger.warning("policy rejected, enforced as %s until fixed: %s", _held_as(held[0]), e)
                else:
                    logger.warning("policy skipped: %s", e)
        traffic = sum(1 for kind, _ in keys if kind in TRAFFIC_KINDS)
        self.policies_dirty += len(keys) - traffic
        self.traffic_dirty |= traffic > 0

    def policy_docs(self) -> list:
        """Every loaded policy document (the whole source); marks them committed."""
        self.replaced = []
        return [d for k in sorted(self.policies) for d in self.policies[k]]

    def traffic_docs(self) -> list:
        return [d for k in sorted(self.traffic) for d in self.traffic[k]]

    def prepared_policies(self, compile_all: bool = True, rebuild: bool = True):
        """The policy set with what was loaded since the last commit in force, changed
        in place (O(the change): ``PolicyStore.prepare_change``, the changed matchers
        compiled when a decision here first needs one; the whole source when the store
        refuses, or None then without ``rebuild``, nothing marked); marks it committed.
        For the event loop: small changes only (``Discovery``)."""
        store = self.agent.policies
        new = store.prepare_change("kubernetes", dict(self.replaced), compile_all, compile_changed=False)
        if new is None and not rebuild:
            return None
        self.policies_dirty, self.replaced = 0, []
        return new if new is not None else store.prepare_sources({"kubernetes": self.policy_docs()},
                                                                 compile_all=compile_all)

    def commit_policies(self) -> None:
        """Put the Kubernetes policies and traffic rules in force at once (tests, reload)."""
        self.traffic_dirty = False
        self.agent.policies.swap(self.prepared_policies(compile_all=False))
        self.agent.traffic.replace_source("kubernetes", self.traffic_docs())
        self.agent.recheck_connections()


FAIL_CLOSED_KINDS = ("authorizationpolicies", "peerauthentications")


def _held_as(doc) -> str:
    """How a stand-in is enforced, for the log line."""
    if doc.kind == "PeerAuthentication":
        return "STRICT mTLS"
    return "ALLOW nothing" if doc.action == "ALLOW" else "DENY all"


def _endpoints_changed(was: tuple[dict, object], entry: dict):
    """The entry validated before (``was``: the entry, its ServiceConfig) with only its
    endpoints changed, when ``entry`` differs from it in nothing else (a slice's
    readiness: the common EndpointSlice event); None: validate ``entry`` afresh. The
    endpoints must be strings, which is all validating them would check."""
    prev, svc = was
    eps = entry.get("endpoints")
    if (entry.keys() != prev.keys() or type(eps) is not list or not all(map(isinstance, eps, _STR))
            or any(entry[k] != prev[k] for k in entry if k != "endpoints")):
        return None
    if eps == prev["endpoints"]:
        return svc
    out = copy.copy(svc)
    out.endpoints = list(eps)
    return out


_STR = itertools.repeat(str)  # isinstance's second argument, for map()
