"""Discovery's incremental state (agent.k8s.index): what one event changes, as tables,
and the property that any sequence of events leaves exactly the state a fresh full list
of the same objects gives (agent.k8s.model.desired), registry included."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.k8s.index import Index
from agent.k8s.model import Cache, desired, key_of, slim
from agent.k8s.reconcile import plan_changes, plan_workloads
from agent.state.workloads import Registry
from tests.unit.k8s_objects import NODE, authz, endpointslice, node, pod, service


def index_with(**kinds) -> Index:
    ix = Index(NODE)
    for kind, items in kinds.items():
        ix.replace(kind, items, "1")
    ix.take()
    return ix


# ---- one event -> exactly what it touches --------------------------------------------------------

BASE = {"pods": [pod("a", "10.1.0.5"), pod("b", "10.2.0.5", node="node-b")],
        "services": [service("api", "10.96.0.10", [{"port": 80, "targetPort": 8080}]),
                     service("db", "10.96.0.11", [{"port": 5432}])],
        "endpointslices": [endpointslice("api", ["10.1.0.5"], [{"port": 8080}]),
                           endpointslice("db", ["10.2.0.5"], [{"port": 5432}])],
        "nodes": [node(NODE, "192.0.2.1", "10.1.0.0/24"), node("node-b", "192.0.2.2", "10.2.0.0/24")],
        "authorizationpolicies": [authz("p1", action="DENY", rules=[{}]), authz("p2", rules=[{}])]}


def status_only(p):
    p["status"]["conditions"][0]["lastProbeTime"] = "2026-11-23T08:00:00Z"
    p["metadata"]["resourceVersion"] = "99"
    p["metadata"]["managedFields"] = [{"manager": "kubelet", "time": "2026-11-23T08:00:00Z"}]
    p["metadata"]["annotations"]["unrelated.example.com/x"] = "y"
    return p


@pytest.mark.parametrize("kind, etype, obj, expect", [
    ("pods", "MODIFIED", status_only(pod("a", "10.1.0.5")), {}),
    ("pods", "MODIFIED", pod("a", "10.1.0.5", labels={"app": "a", "v": "2"}), {"workloads": ["uid-a"]}),
    ("pods", "MODIFIED", pod("a", "10.1.0.9"), {"workloads": ["uid-a"]}),
    ("pods", "ADDED", pod("c", "10.1.0.7"), {"workloads": ["uid-c"]}),
    ("pods", "DELETED", pod("b", "10.2.0.5", node="node-b"), {"workloads": ["uid-b"]}),
    ("pods", "MODIFIED", pod("a", "10.1.0.5", phase="Succeeded"), {"workloads": ["uid-a"]}),
    ("pods", "ADDED", pod("nip", None, phase="Pending"), {}),  # not a workload yet: nothing
    ("endpointslices", "MODIFIED", endpointslice("api", ["10.1.0.5", "10.2.0.5"], [{"port": 8080}]),
     {"services": ["shop/api"]}),
    ("endpointslices", "MODIFIED", endpointslice("api", ["10.1.0.5"], [{"port": 8080}], rv="7"), {}),
    ("services", "MODIFIED", service("db", "10.96.0.11", [{"port": 5433}]), {"services": ["shop/db"]}),
    ("nodes", "MODIFIED", node("node-b", "192.0.2.3", "10.2.0.0/24"), {"nodes": True}),
    ("nodes", "MODIFIED", node("node-b", "192.0.2.2", "10.2.0.0/24", rv="8"), {}),
    ("authorizationpolicies", "MODIFIED", authz("p2", rv="5", rules=[{"to": [{"operation": {"ports": ["80"]}}]}]),
     {"policies": [("authorizationpolicies", "shop/p2")]}),
    ("authorizationpolicies", "MODIFIED", authz("p2", rv="6", rules=[{}]), {}),  # only its version moved
])
def test_one_event_changes_only_what_it_touches(kind, etype, obj, expect):
    ix = index_with(**BASE)
    changed = ix.event(kind, etype, obj)
    c = ix.take()
    assert changed == bool(expect)
    assert sorted(c.workloads) == expect.get("workloads", [])
    assert sorted(c.services) == expect.get("services", [])
    assert c.nodes == expect.get("nodes", False)
    assert sorted(c.policies) == expect.get("policies", [])


def test_a_change_is_planned_for_its_uid_only():
    ix = index_with(pods=[pod(f"p{i}", f"10.1.0.{i}") for i in range(1, 50)])
    r = Registry()
    owned = set()
    full = plan_workloads(ix.workloads(), owned, r, NODE)
    for w in full.register:
        r.register(w)
    ix.event("pods", "MODIFIED", pod("p7", "10.1.0.7", labels={"app": "p7", "v": "2"}))
    plan = plan_changes(ix.take().workloads, full.owned, r, NODE)
    assert [w.uid for w in plan.register] == ["uid-p7"] and not plan.unregister
    assert plan.gained == {"uid-p7"} and not plan.lost


def test_an_address_moves_to_the_newer_pod_and_back_when_it_goes():
    old = pod("old", "10.1.0.5", created="2026-11-23T06:00:00Z")
    ix = index_with(pods=[old])
    ix.event("pods", "ADDED", pod("new", "10.1.0.5", created="2026-11-23T07:00:01Z"))
    c = ix.take()
    assert c.workloads == {"uid-old": None, "uid-new": ix.workloads()["uid-new"]}
    assert ix.all_conflicts() == {"pod shop/old: 10.1.0.5 is held by pod shop/new"}
    ix.event("pods", "DELETED", pod("new", "10.1.0.5"))
    assert set(ix.take().workloads) == {"uid-new", "uid-old"} and set(ix.workloads()) == {"uid-old"}
    assert ix.all_conflicts() == set()


def test_a_relist_streams_into_the_state_and_drops_what_was_not_seen():
    ix = index_with(pods=[pod("a", "10.1.0.5"), pod("b", "10.1.0.6")])
    ix.begin_relist("pods")
    ix.put("pods", "shop/b", None)  # seen, no longer a workload
    ix.end_relist("pods", "30")
    assert set(ix.take().workloads) == {"uid-a", "uid-b"} and ix.workloads() == {}
    assert ix.versions["pods"] == "30"


# ---- any sequence of events == a fresh full list ------------------------------------------------

names = st.sampled_from("abcdef")
pods_st = st.builds(
    lambda n, ip, ip2, lab, node_, phase, t, deleting: pod(
        n, f"10.1.0.{ip}", ips=[f"10.1.0.{ip}"] + ([f"10.1.0.{ip2}"] if ip2 else []), node=node_,
        labels={"app": lab}, phase=phase, created=f"2026-11-23T07:00:0{t}Z",
        **({"deleting": "2026-11-23T08:00:00Z"} if deleting else {})),
    names, st.integers(1, 6), st.sampled_from([0, 0, 5, 7]), st.sampled_from(["x", "y"]),
    st.sampled_from([NODE, "node-b"]), st.sampled_from(["Running", "Running", "Pending", "Succeeded"]),
    st.integers(0, 3), st.booleans())
svc_names = st.sampled_from(["api", "db", "web"])
others_st = st.one_of(
    st.builds(lambda n, port: ("services", service(n, f"10.96.0.{len(n)}", [{"name": "http", "port": port,
                                                                           "targetPort": "http"}])),
              svc_names, st.sampled_from([80, 81])),
    st.builds(lambda n, target, ips, ready: ("endpointslices", endpointslice(target, ips, [{"name": "http", "port": 8080}],
                                                                         ready=ready) | {"metadata": {
        "name": n, "namespace": "shop", "labels": {"kubernetes.io/service-name": target}}}),
              st.sampled_from(["s1", "s2", "s3"]), svc_names, st.lists(st.sampled_from(["10.1.0.1", "10.1.0.2"]),
                                                                        max_size=2), st.booleans()),
    st.builds(lambda n, ip: ("nodes", node(n, ip, "10.2.0.0/24")), st.sampled_from([NODE, "node-b", "node-c"]),
              st.sampled_from(["192.0.2.2", "192.0.2.3"])),
    st.builds(lambda n, act: ("authorizationpolicies", authz(n, action=act, rules=[{}])),
              st.sampled_from(["p1", "p2"]), st.sampled_from(["ALLOW", "DENY"])),
)
event_st = st.tuples(st.sampled_from(["ADDED", "MODIFIED", "DELETED"]),
                     st.one_of(pods_st.map(lambda p: ("pods", p)), others_st))


def state_of(ix: Index) -> tuple:
    services = [e for k in sorted(ix.objects["services"]) for e in ix.service_entries(k)]
    docs = sorted((d["kind"], d["metadata"]["namespace"], d["metadata"]["name"], repr(d))
                  for k in ("authorizationpolicies", "peerauthentications") for d in ix.objects[k].values())
    return ix.workloads(), services, ix.nodes(), docs, ix.all_conflicts()


def state_of_desired(d) -> tuple:
    docs = sorted((x["kind"], x["metadata"]["namespace"], x["metadata"]["name"], repr(x)) for x in d.policy_docs)
    return d.workloads, d.services, (d.nodes, d.this_node), docs, set(d.conflicts)


@settings(max_examples=200, deadline=None)
@given(first=st.lists(pods_st, max_size=6), events=st.lists(event_st, max_size=25), relist_at=st.integers(0, 25))
def test_any_sequence_of_events_equals_a_fresh_full_list(first, events, relist_at):
    live: dict[str, dict[str, dict]] = {k: {} for k in ("pods", "nodes", "services", "endpointslices",
                                                        "authorizationpolicies")}
    ix, registry, owned = Index(NODE), Registry(), set()

    def carry_out():  # what the shell does with the changes
        nonlocal owned
        plan = plan_changes(ix.take().workloads, owned, registry, NODE)
        for uid in plan.unregister:
            registry.remove(uid)
        for w in plan.register:
            registry.register(w)
        owned = (owned - plan.lost) | plan.gained

    for p in first:
        live["pods"][key_of(p)] = p
    ix.replace("pods", list(live["pods"].values()), "1")
    carry_out()
    for i, (etype, (kind, obj)) in enumerate(events):
        if i == relist_at:  # a 410: the kind listed again, streamed into the same state
            ix.replace(kind, list(live[kind].values()), "50")
            carry_out()
        if etype == "DELETED":
            live[kind].pop(key_of(obj), None)
        else:
            live[kind][key_of(obj)] = obj
        value = slim(kind, obj, NODE) if etype in ("ADDED", "MODIFIED") else None
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        ix.apply_event(kind, etype, key_of(obj), value, rv)
        if i % 3 == 0:
            carry_out()
    carry_out()
    fresh = Cache()
    for kind, objs in live.items():
        fresh.replace(kind, list(objs.values()), "99")
    want = desired(fresh, NODE)
    assert state_of(ix) == state_of_desired(want)
    # the registry, planned change by change, equals one planned from nothing
    clean = Registry()
    full = plan_workloads(want.workloads, set(), clean, NODE)
    for w in full.register:
        clean.register(w)
    assert {w.uid: w for w in registry} == {w.uid: w for w in clean} and owned == full.owned
