"""PolicyStore.prepare_change (agent.rbac.store): policies that come, go or change are put
in force in O(the change): the documents where a whole load of the source puts them,
only the changed matchers compiled, and a swap keeps exactly the cached decisions the
change cannot affect (its namespace's workloads its selectors select; every one for a
root-namespace policy). Property: any sequence of changes, with decisions made (and
cached) between them, decides as a fresh load of the final set."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.rbac.evaluate import ConnAttrs, evaluate
from agent.rbac.store import PolicyStore
from tests.unit.test_rbac_store_replace import load, pa

K8S = "kubernetes"


def ap(name, ns="shop", action="ALLOW", app=None, principal="cluster.local/ns/shop/sa/client", dry=False):
    meta = {"name": name, "namespace": ns}
    if dry:
        meta["annotations"] = {"istio.io/dry-run": "true"}
    spec = {"action": action, "rules": [{"from": [{"source": {"principals": [principal]}}]}]}
    if app is not None:
        spec["selector"] = {"matchLabels": {"app": app}}
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": meta, "spec": spec}


def key(d):
    return (d.kind, d.namespace, d.name)


def fresh(k8s, files=()):
    """The final set loaded whole, the Kubernetes source in (kind, name) order."""
    st_ = PolicyStore()
    st_.swap(st_.prepare_sources({"/etc/a.yaml": list(files)}))
    st_.swap(st_.prepare_sources({K8S: sorted(k8s, key=lambda d: (d.kind, d.namespace, d.name))}))
    return st_


def refs(s):
    return {ns: [p.ref for p in ps] for ns, ps in s.by_ns.items()}


FILES = [ap("m-file", app="web")]
BASE = [ap("b", app="web"), ap("d", action="DENY", app="db"), ap("c", ns="web"), pa("strict")]


@pytest.mark.parametrize(("changes", "want_shop"), [
    ({"b": ap("b", action="DENY", app="web")}, ["shop/m-file", "shop/b", "shop/d"]),   # in place
    ({"a": ap("a")}, ["shop/m-file", "shop/a", "shop/b", "shop/d"]),                   # new: by name, after the file's
    ({"e": ap("e")}, ["shop/m-file", "shop/b", "shop/d", "shop/e"]),
    ({"b": None}, ["shop/m-file", "shop/d"]),                                           # gone
    ({"b": None, "a": ap("a", app="web")}, ["shop/m-file", "shop/a", "shop/d"]),        # one goes, one comes
    ({"zz": None}, ["shop/m-file", "shop/b", "shop/d"]),                                # nothing to delete
])
def test_a_change_leaves_the_order_a_whole_load_gives(changes, want_shop):
    st_ = fresh(load(*BASE), load(*FILES))
    docs = {("AuthorizationPolicy", "shop", n): (load(o)[0] if o else None) for n, o in changes.items()}
    new = st_.prepare_change(K8S, docs)
    assert new is not None and refs(new)["shop"] == want_shop and refs(new)["web"] == ["web/c"]
    final = {key(d): d for d in load(*BASE)}
    final.update(docs)
    assert refs(new) == refs(fresh([d for d in final.values() if d is not None], load(*FILES)).snapshot())
    assert sorted(new.docs) == sorted(fresh([d for d in final.values() if d], load(*FILES)).snapshot().docs)


def test_a_namespace_whose_last_policy_goes_is_gone_and_one_can_come():
    st_ = fresh(load(*BASE))
    st_.swap(st_.prepare_change(K8S, {("AuthorizationPolicy", "web", "c"): None}))
    assert "web" not in st_.snapshot().by_ns
    st_.swap(st_.prepare_change(K8S, {("AuthorizationPolicy", "new", "x"): load(ap("x", ns="new"))[0]}))
    assert refs(st_.snapshot())["new"] == ["new/x"]


@pytest.mark.parametrize("changes", [
    {("AuthorizationPolicy", "shop", "m-file"): ap("m-file")},   # another source's document
    {("AuthorizationPolicy", "shop", "m-file"): None},
    {("PeerAuthentication", "shop", "new"): pa("new")},           # a peer policy comes
    {("PeerAuthentication", "shop", "strict"): None},             # or goes: the source is rebuilt
])
def test_what_it_cannot_do_in_place_is_refused_and_nothing_is_touched(changes):
    st_ = fresh(load(*BASE), load(*FILES))
    before = (refs(st_.snapshot()), dict(st_.snapshot().docs))
    docs = {k: (load(v)[0] if v else None) for k, v in changes.items()}
    assert st_.prepare_change(K8S, docs) is None
    assert (refs(st_.snapshot()), dict(st_.snapshot().docs)) == before


def test_only_the_changed_matchers_are_compiled():
    st_ = fresh(load(*BASE))
    old = st_.snapshot().compiled
    b, e = load(ap("b", action="DENY", app="web"), ap("e"))
    new = st_.prepare_change(K8S, {key(b): b, key(e): e, ("AuthorizationPolicy", "shop", "d"): None})
    kept = [p for p in new.by_ns["shop"] + new.by_ns["web"] if p not in (b, e)]
    assert [p.ref for p in kept] == ["web/c"] and new.compiled[id(kept[0])] is old[id(kept[0])]
    assert {new.compiled[id(b)][0], new.compiled[id(e)][0]} == {"shop/b", "shop/e"}
    assert len(new.compiled) == 3  # d's went with it


# ---- the caches a swap keeps ------------------------------------------------------------

WORKLOADS = {"shop-web": ("shop", {"app": "web"}), "shop-db": ("shop", {"app": "db"}),
             "web-a": ("web", {"app": "a"})}


def warmed(st_):
    """Every workload's Applicable computed (and cached) now, by name."""
    return {n: st_.applicable(ns, labels) for n, (ns, labels) in WORKLOADS.items()}


@pytest.mark.parametrize(("change", "dropped"), [
    ({("AuthorizationPolicy", "shop", "b"): ap("b", action="DENY", app="web")}, {"shop-web"}),
    ({("AuthorizationPolicy", "shop", "b"): ap("b", app="db")}, {"shop-web", "shop-db"}),  # both selectors
    ({("AuthorizationPolicy", "shop", "n"): ap("n")}, {"shop-web", "shop-db"}),            # no selector: the namespace
    ({("AuthorizationPolicy", "shop", "d"): None}, {"shop-db"}),
    ({("AuthorizationPolicy", "web", "c"): ap("c", ns="web", action="AUDIT")}, {"web-a"}),
    ({("AuthorizationPolicy", "istio-system", "r"): ap("r", ns="istio-system", app="web")},
     set(WORKLOADS)),                                                                        # root: everyone
    ({("PeerAuthentication", "shop", "strict"): pa("strict", mode="PERMISSIVE")}, set()),  # not in Applicable
])
def test_a_swap_keeps_the_cached_decisions_the_change_cannot_affect(change, dropped):
    st_ = fresh(load(*BASE))
    seen = []
    st_.on_swap.append(seen.append)
    before = warmed(st_)
    gen = st_.generation
    st_.swap(st_.prepare_change(K8S, {k: (load(v)[0] if v else None) for k, v in change.items()}))
    assert seen == [gen + 1]  # the core's stored answers and L7 memos are dropped all the same
    after = warmed(st_)
    assert {n for n in WORKLOADS if after[n] is not before[n]} == dropped
    want = warmed(fresh([d for d in st_.snapshot().docs.values() for d in [d[0]]]))
    assert {n: [r for r, _ in a.allow + a.deny + a.audit] for n, a in after.items()} == {
        n: [r for r, _ in a.allow + a.deny + a.audit] for n, a in want.items()}


def test_a_whole_rebuild_or_a_set_from_another_generation_starts_the_caches_afresh():
    st_ = fresh(load(*BASE))
    before = warmed(st_)
    st_.swap(st_.prepare_sources({K8S: load(*BASE)}))
    assert all(warmed(st_)[n] is not before[n] for n in WORKLOADS)
    stale = st_.prepare_change(K8S, {})  # prepared from the set in force now...
    st_.swap(st_.prepare_change(K8S, {}))  # ...which another change replaces first
    before = warmed(st_)
    st_.swap(stale)
    assert all(warmed(st_)[n] is not before[n] for n in WORKLOADS)


def test_lazily_compiled_matchers_of_untouched_policies_are_kept():
    st_ = PolicyStore()
    st_.swap(st_.prepare_sources({K8S: load(*BASE)}, compile_all=False))
    warmed(st_)
    lazy = {p.ref: m for p, m in st_._lazy.values()}
    b = load(ap("b", action="DENY", app="web"))[0]
    st_.swap(st_.prepare_change(K8S, {key(b): b}, compile_all=False))
    warmed(st_)
    now = {p.ref: m for p, m in st_._lazy.values()}
    assert now["shop/d"] is lazy["shop/d"] and now["web/c"] is lazy["web/c"]
    assert now["shop/b"] is not lazy["shop/b"] and now["shop/b"][0] == "shop/b"


# ---- property: any sequence decides as a fresh load of the final set ----------------------

NAMES = ["a", "b", "c"]
NAMESPACES = ["shop", "web", "istio-system"]
PRINCIPALS = ["cluster.local/ns/shop/sa/client", "cluster.local/ns/web/sa/other"]
APPS = [None, "web", "db"]
policy = st.builds(lambda name, ns, action, app, principal, dry: ap(name, ns, action, app, principal, dry),
                   st.sampled_from(NAMES), st.sampled_from(NAMESPACES), st.sampled_from(["ALLOW", "DENY", "AUDIT"]),
                   st.sampled_from(APPS), st.sampled_from(PRINCIPALS), st.booleans())
step = st.one_of(policy.map(lambda o: ("put", o)),
                 st.tuples(st.sampled_from(NAMES), st.sampled_from(NAMESPACES)).map(lambda t: ("delete", t)))
CONNS = [ConnAttrs("10.0.0.1", 4000, pr, "shop", "10.1.0.5", 8080, ns, labels)
         for pr in PRINCIPALS for ns in ("shop", "web") for labels in ({"app": "web"}, {"app": "db"}, {})]


def decisions(st_):
    return [(d.verdict, d.policy, d.reason, d.audit, d.audit_policy, d.dry_run_matches)
            for d in (evaluate(st_, c) for c in CONNS)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(step, min_size=1, max_size=3), max_size=8), st.booleans(), st.booleans())
def test_any_sequence_of_changes_decides_as_a_fresh_load(batches, compile_all, with_file):
    # another source's policy in the same namespace (a name of its own: two sources with
    # one name is last-writer-wins, a matter of prepare_sources, not of this)
    files = load(ap("f", "shop", "DENY", "db", PRINCIPALS[1])) if with_file else []
    st_ = fresh([], files)
    have: dict = {}
    for batch in batches:
        changes: dict = {}
        for op, arg in batch:
            if op == "put":
                d = load(arg)[0]
                changes[key(d)] = d
            else:
                changes[("AuthorizationPolicy", arg[1], arg[0])] = None
        new = st_.prepare_change(K8S, changes, compile_all)
        assert new is not None
        have.update(changes)
        st_.swap(new)
        decisions(st_)  # cached under this generation: the next swap must drop what it affects
    final = [d for d in have.values() if d is not None]
    want = fresh(final, files)
    assert decisions(st_) == decisions(want)
    assert refs(st_.snapshot()) == refs(want.snapshot())
    assert st_.list() == want.list()


class _Dst:
    def __init__(self, ns, labels):
        self.namespace, self.labels = ns, labels


class _Conn:
    def __init__(self, dst):
        self.dst = dst


@pytest.mark.parametrize("touched,want", [
    # (the touched policies, which of the connections below are evaluated again)
    ([ap("a", app="web")], [True, True, False, False, False]),
    ([ap("a", app="api")], [True, False, False, False, False]),
    ([ap("a")], [True, True, True, False, False]),                 # no selector: its whole namespace
    ([ap("a", app="web"), ap("b", ns="web", app="web")], [True, True, False, True, False]),
    ([], [True, False, False, False, False]),                      # a PeerAuthentication changed in place
])
def test_rechecks_selects_the_connections_affects_does(touched, want):
    st_ = PolicyStore()
    docs = load(*touched)
    conns = [_Conn(None), _Conn(_Dst("shop", {"app": "web"})), _Conn(_Dst("shop", {"app": "db"})),
             _Conn(_Dst("web", {"app": "web"})), _Conn(_Dst("other", {"app": "web"}))]
    only = st_.rechecks(tuple(docs))
    assert [only(c) for c in conns] == want
    assert want == [c.dst is None or st_.affects(tuple(docs), c.dst.namespace, c.dst.labels) for c in conns]


def test_rechecks_every_connection_for_a_root_namespace_policy():
    st_ = PolicyStore()
    assert st_.rechecks(tuple(load(ap("a", ns="istio-system"), ap("b")))) is None
