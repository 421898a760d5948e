"""PolicyStore.prepare_replace (agent.rbac.store): documents that take the place of the
ones of the same kind and name leave exactly the set a whole ``prepare_sources`` of the
source builds (order, namespaces, peer policies, compiled matchers), and anything else
(a new name, another source's document) is refused so the caller rebuilds."""

from __future__ import annotations

import json

import pytest

from agent.rbac.loader import load_documents
from agent.rbac.store import PolicyStore


def ap(name, ns="shop", action="ALLOW", principal="cluster.local/ns/shop/sa/client"):
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"action": action, "rules": [{"from": [{"source": {"principals": [principal]}}]}]}}


def pa(name, ns="shop", mode="STRICT"):
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": ns}, "spec": {"mtls": {"mode": mode}}}


def load(*objs):
    return [d for o in objs for d in load_documents(json.dumps(o), "<test>")]


def shape(s):
    """Everything a set decides by, as comparable values (documents by identity)."""
    return ([(k, id(d), src) for k, (d, src) in s.docs.items()],
            {ns: [id(p) for p in ps] for ns, ps in s.by_ns.items()},
            [id(p) for p in s.peer], {i: ref for i, (ref, _m) in s.compiled.items()})


def store_with(k8s, files=()):
    st = PolicyStore()
    st.swap(st.prepare_sources({"/etc/policies/a.yaml": list(files)}))
    st.swap(st.prepare_sources({"kubernetes": list(k8s)}))
    return st


BASE = [ap("a"), ap("b"), ap("c", ns="web"), pa("strict"), pa("web", ns="web")]


@pytest.mark.parametrize("changed", [
    [ap("b", action="DENY")],                                     # one policy, its namespace's order kept
    [ap("a", principal="cluster.local/ns/shop/sa/other"), ap("c", ns="web", action="DENY")],  # two namespaces
    [pa("strict", mode="PERMISSIVE")],                            # a peer policy
    [ap("b", action="DENY"), ap("b", action="AUDIT")],            # the same one twice: the last wins
])
@pytest.mark.parametrize("compile_all", [True, False])
def test_replacing_in_place_equals_rebuilding_the_source(changed, compile_all):
    k8s = load(*BASE)
    files = load(ap("file-1"), pa("file-2"))
    st = store_with(k8s, files)
    new = load(*changed)
    got = st.prepare_replace("kubernetes", new, compile_all=compile_all)
    assert got is not None
    last = {(d.kind, d.namespace, d.name): d for d in new}
    whole = [last.get((d.kind, d.namespace, d.name), d) for d in k8s]
    want = st.prepare_sources({"kubernetes": whole}, compile_all=compile_all)
    assert shape(got) == shape(want)
    if compile_all:  # unchanged matchers reused, changed ones compiled anew
        old = st.snapshot().compiled
        for d in whole:
            if d.kind == "AuthorizationPolicy" and d not in new:
                assert got.compiled[id(d)][1] is old[id(d)][1]
            elif d.kind == "AuthorizationPolicy":
                assert id(d) not in old and got.compiled[id(d)][0] == d.ref


@pytest.mark.parametrize("docs", [
    [ap("new")],              # a name the source does not have: it would be appended, not replaced
    [ap("file-1")],           # another source's document
    [pa("a")],                # the same name as a policy of another kind
])
def test_anything_but_a_replacement_is_refused(docs):
    st = store_with(load(*BASE), load(ap("file-1")))
    before = shape(st.snapshot())
    assert st.prepare_replace("kubernetes", load(*docs)) is None
    assert shape(st.snapshot()) == before  # nothing touched


def test_decisions_follow_the_replacement():
    st = store_with(load(ap("b", principal="cluster.local/ns/shop/sa/client")))
    st.swap(st.prepare_replace("kubernetes", load(ap("b", action="DENY"))))
    assert [(p["name"], p["action"]) for p in st.list()] == [("b", "DENY")]
    assert st.sources() == {"kubernetes": list(st.snapshot().by_ns["shop"])}


@pytest.mark.parametrize("base_compiled", [True, False])
@pytest.mark.parametrize("compile_all,compile_changed", [(True, True), (True, False), (False, True), (False, False)])
def test_one_policy_replaced_takes_the_short_path_to_the_same_set(base_compiled, compile_all, compile_changed):
    """A watch event's one AuthorizationPolicy replaced (PolicyStore._replace_one) leaves
    the set the general path of prepare_change builds: order, namespaces, compiled
    matchers (unchanged ones reused), what it touched and the set it was made from."""
    st = PolicyStore()
    st.swap(st.prepare_sources({"/etc/policies/a.yaml": load(ap("file-1"))}, compile_all=base_compiled))
    st.swap(st.prepare_sources({"kubernetes": load(*BASE)}, compile_all=base_compiled))
    (new,) = load(ap("b", action="DENY"))
    key = (new.kind, new.namespace, new.name)
    got = st.prepare_change("kubernetes", {key: new}, compile_all, compile_changed)
    # the general path: the same change beside a no-op one (a policy that is not there, gone)
    want = st.prepare_change("kubernetes", {key: new, ("AuthorizationPolicy", "shop", "absent"): None},
                             compile_all, compile_changed)
    assert shape(got) == shape(want)
    assert [id(p) for p in got.touched] == [id(p) for p in want.touched] == [id(st.snapshot().docs[key][0]), id(new)]
    assert got.base == want.base == st.snapshot().serial
    assert got.peer is st.snapshot().peer
    for i, (_ref, m) in got.compiled.items():
        if i != id(new):
            assert m is st.snapshot().compiled[i][1]  # reused, never compiled again
    assert (id(new) in got.compiled) == (compile_all and compile_changed)
    assert st.snapshot().docs[key][0] is not new  # the set in force is untouched
    # refused as before: another source's policy (the caller rebuilds)
    assert st.prepare_change("kubernetes", {("AuthorizationPolicy", "shop", "file-1"): new}) is None
