"""The policies in force, indexed so a decision only looks at the policies that apply
to its workload. Pure state; the admin API, the policy directory and Kubernetes feed
it. Each file or API call is a ``source``; re-reading a source replaces what it had.

Changes are two steps so that the expensive one can run beside the thread that decides
connections: ``prepare_*`` builds a new immutable ``PolicySet`` (grouped by namespace,
every matcher compiled) from the current one without touching it; ``swap`` puts it in
force in O(1). A swap names the generation it was prepared from and is refused if
another change came first (the caller prepares again), so no change is lost. Nothing
here may mutate a ``PolicySet`` once built: a thread may be reading it.

A change made in place (``prepare_change``: a watch event's one policy) costs O(the
change and its namespaces), and its swap keeps every cached per-workload answer it
cannot affect (``_forget``): the rule is that a workload's applicable policies depend
only on the policies of its namespace and the root namespace whose selectors select it.
The caches are touched only on the deciding thread (``applicable``, ``swap``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

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
    reads_headers: bool = False  # some applicable rule has a request.headers condition


# Distinct (namespace, labels) sets whose applicable policies are cached; beyond this
# the cache is cleared (workload churn must not grow memory without bound).
INDEX_MAX = 65536


_serials = itertools.count(1)


@dataclass(slots=True)
class PolicySet:
    """One generation of policies; never mutated once built. Slotted, not frozen (as
    agent.rbac.model's values): a frozen one pays an ``object.__setattr__`` per field,
    a third of building one on a watch event's cold cache (0.021 -> 0.014 ms)."""

    docs: dict[tuple[str, str, str], tuple[Doc, str]] = field(default_factory=dict)  # key -> (doc, source)
    by_ns: dict[str, tuple[AuthorizationPolicy, ...]] = field(default_factory=dict)
    peer: tuple[PeerAuthentication, ...] = ()
    compiled: dict[int, tuple[str, Matcher]] = field(default_factory=dict)  # id(policy) -> (ref, matcher)
    serial: int = field(default_factory=lambda: next(_serials), compare=False)
    # Set by an in-place change (``prepare_change``/``prepare_replace``): the serial of
    # the set it was made from and what it touched, so a swap from exactly that set
    # keeps every cached ``Applicable`` the change cannot affect. ``touched``: the
    # AuthorizationPolicies that went or came (both versions of a changed one); any
    # other change (base None) starts the caches afresh.
    base: int | None = field(default=None, compare=False)
    touched: tuple[AuthorizationPolicy, ...] = field(default=(), compare=False)


def build_set(docs: dict[tuple[str, str, str], tuple[Doc, str]], compile_all: bool = False,
              previous: PolicySet | None = None) -> PolicySet:
    """``previous``: matchers of policies it shares (the same objects) are reused."""
    by_ns: dict[str, list[AuthorizationPolicy]] = {}
    peer = []
    for doc, _ in docs.values():
        if isinstance(doc, AuthorizationPolicy):
            by_ns.setdefault(doc.namespace, []).append(doc)
        else:
            peer.append(doc)
    compiled = {}
    if compile_all:
        old = previous.compiled if previous is not None else {}
        for ps in by_ns.values():
            for p in ps:
                compiled[id(p)] = old.get(id(p)) or (p.ref, compile_policy(p))
    return PolicySet(docs, {ns: tuple(ps) for ns, ps in by_ns.items()}, tuple(peer), compiled)


class PolicyStore:
    def __init__(self, root_namespace: str = "istio-system") -> None:
        self.root_namespace = root_namespace
        self._set = PolicySet()
        self._index: dict[str, dict[tuple, Applicable]] = {}  # namespace -> sorted labels -> ...
        # matchers compiled on demand (sync changes): id(policy) -> (policy, (ref, matcher))
        self._lazy: dict[int, tuple[AuthorizationPolicy, tuple[str, Matcher]]] = {}
        self._by_obj: dict[tuple[str, int], tuple[object, Applicable]] = {}
        self._obj_ns: dict[str, list[tuple[str, int]]] = {}  # namespace -> its _by_obj keys
        self._indexed = 0  # entries in _index
        self.retired: list[tuple] = []
        self.generation = 0
        # called with the new generation right after every swap, on the deciding thread:
        # whoever reuses decisions made under a generation drops them (the core's L7 memos,
        # proxy/native_http.py; the core's stored answers for repeat flows, proxy/repeat.py)
        self.on_swap: list[Callable[[int], None]] = []

    # ---- preparing a change (pure; safe beside the deciding thread) -------------------
    def prepare_apply(self, docs: list[Doc], source: str, compile_all: bool = True) -> PolicySet:
        new = dict(self._set.docs)
        for d in docs:
            new[(d.kind, d.namespace, d.name)] = (d, source)
        return build_set(new, compile_all, self._set)

    def prepare_sources(self, sources: dict[str, list[Doc]], only: bool = False,
                        compile_all: bool = True) -> PolicySet:
        """Each of ``sources`` replaces what that source had; ``only``: every other
        source is dropped too (a worker taking the supervisor's whole state)."""
        keep = {} if only else {k: v for k, v in self._set.docs.items() if v[1] not in sources}
        for source, docs in sources.items():
            for d in docs:
                keep[(d.kind, d.namespace, d.name)] = (d, source)
        return build_set(keep, compile_all, self._set)

    def prepare_replace(self, source: str, docs: list[Doc], compile_all: bool = True) -> PolicySet | None:
        """Each of ``docs`` takes the place of the document of its kind, namespace and
        name that ``source`` has now, in place (the order ``prepare_sources`` gives
        stays; the last of each wins). None when one of ``docs`` has no such document
        (a new one: ``prepare_change``)."""
        last = {(d.kind, d.namespace, d.name): d for d in docs}
        have = self._set.docs
        if any(have.get(k, (None, None))[1] != source for k in last):
            return None
        return self.prepare_change(source, last, compile_all)

    def prepare_change(self, source: str, changes: dict[tuple[str, str, str], Doc | None],
                       compile_all: bool = True, compile_changed: bool = True) -> PolicySet | None:
        """``source``'s documents with ``changes`` made (key -> its new document, None:
        gone), in O(the change and its namespaces): a replaced document keeps its
        place, a new one goes where a whole ``prepare_sources`` of the source in (kind,
        name) order puts it (after the other sources' policies of its namespace, by
        name among the source's own), only the changed matchers are compiled and the
        rest of the set is shared. ``compile_changed`` False: the changed ones are
        compiled when a decision first needs them (on the deciding thread: a change
        put in force there, most of whose policies select no workload of this node).
        None (the caller rebuilds the source) when a key is another source's or a
        PeerAuthentication comes or goes."""
        old = self._set
        if len(changes) == 1:
            one = self._replace_one(old, source, changes, compile_all, compile_changed)
            if one is not None:
                return one
        docs = dict(old.docs)
        swapped: dict[int, Doc] = {}  # id(old doc) -> its replacement
        gone: set[int] = set()
        added: dict[str, list[AuthorizationPolicy]] = {}
        touched: list[AuthorizationPolicy] = []
        for key, d in changes.items():
            have = docs.get(key)
            if have is not None and have[1] != source:
                return None
            if key[0] != "AuthorizationPolicy":
                if have is None or d is None:
                    return None
                swapped[id(have[0])] = d
            elif have is not None:
                touched.append(have[0])
                if d is None:
                    gone.add(id(have[0]))
                else:
                    swapped[id(have[0])] = d
            elif d is not None:
                added.setdefault(key[1], []).append(d)
            else:
                continue
            if d is None:
                del docs[key]
                continue
            docs[key] = (d, source)
            if isinstance(d, AuthorizationPolicy):
                touched.append(d)
        by_ns, peer = dict(old.by_ns), old.peer
        for ns in {p.namespace for p in touched}:
            ps = [swapped.get(id(p), p) for p in by_ns.get(ns, ()) if id(p) not in gone]
            if ns in added:  # the source's own, by name, after the others'
                mine = sorted([p for p in ps if docs[(p.kind, ns, p.name)][1] == source] + added[ns],
                              key=lambda p: p.name)
                ps = [p for p in ps if docs[(p.kind, ns, p.name)][1] != source] + mine
            if ps:
                by_ns[ns] = tuple(ps)
            else:
                by_ns.pop(ns, None)
        if any(not isinstance(d, AuthorizationPolicy) for d in swapped.values()):
            peer = tuple(swapped.get(id(p), p) for p in peer)
        compiled = {}  # as build_set: without compile_all, matchers are compiled on demand
        if compile_all:
            compiled = dict(old.compiled)
            for i in gone | swapped.keys():
                compiled.pop(i, None)
            for p in touched if compile_changed else ():
                if docs.get((p.kind, p.namespace, p.name), (None,))[0] is p:
                    compiled[id(p)] = (p.ref, compile_policy(p))
        return PolicySet(docs, by_ns, peer, compiled, base=old.serial, touched=tuple(touched))

    @staticmethod
    def _replace_one(old: PolicySet, source: str, changes: dict, compile_all: bool,
                     compile_changed: bool) -> PolicySet | None:
        """``prepare_change`` of the commonest change, a watch event's one
        AuthorizationPolicy of ``source`` replaced by a new version: the same set in a
        few steps (an isolated event's CPU is mostly cache misses, one per step); None
        for any other change."""
        ((key, d),) = changes.items()
        have = old.docs.get(key)
        if have is None or d is None or have[1] != source or key[0] != "AuthorizationPolicy":
            return None
        was = have[0]
        docs = old.docs.copy()
        docs[key] = (d, source)
        by_ns = old.by_ns.copy()
        by_ns[key[1]] = tuple(d if p is was else p for p in by_ns[key[1]])
        compiled = old.compiled.copy() if compile_all else {}
        if compiled:
            compiled.pop(id(was), None)
        if compile_all and compile_changed:
            compiled[id(d)] = (d.ref, compile_policy(d))
        return PolicySet(docs, by_ns, old.peer, compiled, base=old.serial, touched=(was, d))

    def prepare_delete(self, namespace: str, name: str, compile_all: bool = True) -> PolicySet | None:
        new = {k: v for k, v in self._set.docs.items() if not (k[1] == namespace and k[2] == name)}
        return build_set(new, compile_all, self._set) if len(new) != len(self._set.docs) else None

    def swap(self, new: PolicySet, base_generation: int | None = None) -> bool:
        """Put ``new`` in force (O(1), or O(the cached entries of the namespaces a change
        made in place touched)); False when prepared from an older generation."""
        if base_generation is not None and base_generation != self.generation:
            return False
        # what the old generation held, freed by whoever clears ``retired`` (a thread:
        # freeing 10,000 compiled policies takes tens of ms)
        if new.base is not None and new.base == self._set.serial:
            self.retired.append((self._set, self._forget(new.touched)))
        else:
            self.retired.append((self._set, self._index, self._lazy, self._by_obj))
            self._index, self._lazy, self._by_obj, self._obj_ns = {}, {}, {}, {}
            self._indexed = 0
        self._set = new
        self.generation += 1
        for f in self.on_swap:
            f(self.generation)
        if len(self.retired) > 1:  # nobody collects them (tests, sync callers): free now
            del self.retired[:-1]
        return True

    def _forget(self, touched: tuple[AuthorizationPolicy, ...]) -> list:
        """Drop the cached entries ``touched`` (policies that came, went or changed) can
        affect: the workloads of their namespace their selectors select (every cache
        when one is in the root namespace: it applies to every namespace). What was
        dropped is returned, to be freed with the old set."""
        dropped: list = [self._lazy.pop(id(p), None) for p in touched] if self._lazy else []
        if not (self._index or self._by_obj):  # nothing cached (no decision since the last change)
            return dropped
        if any(p.namespace == self.root_namespace for p in touched):
            dropped += [self._index, self._by_obj]
            self._index, self._by_obj, self._obj_ns, self._indexed = {}, {}, {}, 0
            return dropped
        for ns in {p.namespace for p in touched}:
            sels = {p.selector for p in touched if p.namespace == ns}
            hit = self._index.get(ns, {})
            for lt in [lt for lt in hit if any(self._selects(sel, dict(lt)) for sel in sels)]:
                dropped.append(hit.pop(lt))
                self._indexed -= 1
            keep = []
            for k in self._obj_ns.pop(ns, ()):
                e = self._by_obj.get(k)
                if e is None:
                    continue
                if any(self._selects(sel, e[0]) for sel in sels):
                    dropped.append(self._by_obj.pop(k))
                else:
                    keep.append(k)
            if keep:
                self._obj_ns[ns] = keep
        return dropped

    def snapshot(self) -> PolicySet:
        """The set in force (immutable: safe to read from a thread)."""
        return self._set

    # ---- immediate changes (tests, small updates) ------------------------------------
    def apply(self, docs: list[Doc], source: str) -> None:
        self.swap(self.prepare_apply(docs, source, compile_all=False))

    def replace_source(self, source: str, docs: list[Doc]) -> None:
        self.swap(self.prepare_sources({source: docs}, compile_all=False))

    def sources(self) -> dict[str, list[Doc]]:
        """Every source (a file, ``admin-api``, ``kubernetes``...) with its documents."""
        out: dict[str, list[Doc]] = {}
        for _key, (doc, source) in sorted(self._set.docs.items()):
            out.setdefault(source, []).append(doc)
        return out

    def delete(self, namespace: str, name: str) -> bool:
        new = self.prepare_delete(namespace, name, compile_all=False)
        if new is not None:
            self.swap(new)
        return new is not None

    def __len__(self) -> int:
        return len(self._set.docs)

    def list(self) -> list[dict]:
        out = []
        for (kind, ns, name), (doc, source) in sorted(self._set.docs.items()):
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

    def affects(self, touched: tuple[AuthorizationPolicy, ...], namespace: str, labels: dict[str, str]) -> bool:
        """Whether a change that touched these policies (``PolicySet.touched``) can change
        a decision for a workload of ``namespace`` with ``labels``: the same rule by which
        ``swap`` keeps that workload's cached entries."""
        return any(p.namespace == self.root_namespace or (p.namespace == namespace and self._selects(p.selector, labels))
                   for p in touched)

    def rechecks(self, touched: tuple[AuthorizationPolicy, ...]) -> Callable[[object], bool] | None:
        """The live connections a change that touched these policies can decide otherwise,
        as a predicate for ``Agent.recheck_connections`` (``affects`` of a connection's
        destination; one without a destination always); None: every connection (a
        root-namespace policy applies to all). The namespace is compared first, so each
        of a node's thousands of connections costs a set lookup."""
        nss = {p.namespace for p in touched}
        if self.root_namespace in nss:
            return None
        affects = self.affects
        return lambda c: c.dst is None or (c.dst.namespace in nss and affects(touched, c.dst.namespace, c.dst.labels))

    def applicable(self, namespace: str, labels: dict[str, str]) -> Applicable:
        # Fast path: a workload's labels are one long-lived mapping, so its identity is a
        # key (the entry holds the mapping, so the id cannot be reused while cached).
        hit = self._by_obj.get((namespace, id(labels)))
        if hit is not None and hit[0] is labels:
            return hit[1]
        a = self._applicable(namespace, labels)
        if len(self._by_obj) >= INDEX_MAX:
            self._by_obj.clear()
            self._obj_ns.clear()
        key = (namespace, id(labels))
        if hit is None:
            self._obj_ns.setdefault(namespace, []).append(key)
        self._by_obj[key] = (labels, a)
        return a

    def _applicable(self, namespace: str, labels: dict[str, str]) -> Applicable:
        key = tuple(sorted(labels.items()))
        cached = self._index.get(namespace)
        hit = cached.get(key) if cached is not None else None
        if hit is not None:
            return hit
        by_ns = self._set.by_ns
        pols = [p for ns in {namespace, self.root_namespace} for p in by_ns.get(ns, ())
                if self._selects(p.selector, labels)]
        enforced = [p for p in pols if not p.dry_run]
        m = self._matcher
        a = Applicable(
            deny=tuple(m(p) for p in enforced if p.action == "DENY"),
            allow=tuple(m(p) for p in enforced if p.action == "ALLOW"),
            audit=tuple(m(p) for p in enforced if p.action == "AUDIT"),
            dry_run=tuple(m(p) for p in pols if p.dry_run),
            http=any(r.is_http for p in pols for r in p.rules),
            reads_headers=any(c.is_http for p in pols for r in p.rules for c in r.conditions),
        )
        if self._indexed >= INDEX_MAX:
            self._index.clear()
            self._indexed = 0
        self._index.setdefault(namespace, {})[key] = a
        self._indexed += 1
        return a

    def _matcher(self, p: AuthorizationPolicy) -> tuple[str, Matcher]:
        """Compiled once per store generation, shared by every workload it applies to."""
        hit = self._set.compiled.get(id(p))
        if hit is not None:
            return hit
        lazy = self._lazy.get(id(p))
        if lazy is None or lazy[0] is not p:
            lazy = self._lazy[id(p)] = (p, (p.ref, compile_policy(p)))
        return lazy[1]

    def peer_authentications(self) -> tuple[PeerAuthentication, ...]:
        return self._set.peer
