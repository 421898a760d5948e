"""Kubernetes discovery's pure core (agent.k8s.model, agent.k8s.reconcile): list results
and watch events in, the registry's workloads, peers, services and policy documents out.

``Mirror`` does what the trio shell does with the core, minus the API and the agent:
cache the objects, compute the desired state, plan, apply the plan to a real Registry."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import PeerNode, ServiceConfig
from agent.k8s.model import Cache, desired, node_entry, pod_workload, service_entries
from agent.k8s.reconcile import Backoff, merge_nodes, merge_services, plan_workloads
from agent.rbac.loader import load_documents
from agent.state.workloads import Registry, workload_from_json
from tests.unit.k8s_objects import NODE, authz, endpointslice, node, pod, service


class Mirror:
    def __init__(self, registry: Registry | None = None) -> None:
        self.cache = Cache()
        self.registry = registry if registry is not None else Registry()
        self.owned: set[str] = set()

    def apply(self):
        d = desired(self.cache, NODE)
        plan = plan_workloads(d.workloads, self.owned, self.registry, NODE)
        for uid in plan.unregister:
            self.registry.remove(uid)
        for w in plan.register:
            self.registry.register(w)
        self.owned = plan.owned
        return plan

    def list(self, items, rv):
        self.cache.replace("pods", items, rv)
        return self.apply()

    def event(self, etype, obj):
        changed = self.cache.event("pods", etype, obj)
        return changed, self.apply()

    def state(self) -> dict:
        return {w.uid: (w.ips, dict(w.labels), w.node) for w in self.registry}


# ---- one pod -> one workload (or none) ------------------------------------------------------


def test_a_pod_becomes_the_admin_api_workload_body():
    p = pod("web", "10.1.0.5", ips=["10.1.0.5", "fd00::5"], labels={"app": "web", "v": "1"},
            annotations={"hostmesh.io/http-ports": "9090, 8080,x,70000,8080"})
    assert pod_workload(p, NODE) == {
        "uid": "uid-web", "name": "web", "namespace": "shop", "service_account": "web", "ip": "10.1.0.5",
        "ips": ["10.1.0.5", "fd00::5"], "labels": {"app": "web", "v": "1"}, "http_ports": [8080, 9090], "node": None}
    assert pod_workload(pod("far", "10.2.0.5", node="node-b"), NODE)["node"] == "node-b"
    # the workload body is what the admin API accepts, identity = namespace + service account
    w = workload_from_json(pod_workload(p, NODE), local_node=NODE)
    assert w.identity_key == ("shop", "web") and w.spiffe_id("cluster.local") == "spiffe://cluster.local/ns/shop/sa/web"


@pytest.mark.parametrize("why, p", [
    ("no IP yet", pod("nip", None, phase="Pending")),
    ("host network", pod("hn", "192.0.2.1", host_network=True)),
    ("Succeeded", pod("done", "10.1.0.6", phase="Succeeded")),
    ("Failed", pod("bad", "10.1.0.6", phase="Failed")),
    ("Unknown", pod("lost", "10.1.0.6", phase="Unknown")),
    ("opted out by label", pod("out", "10.1.0.7", labels={"hostmesh.io/capture": "disabled"})),
    ("opted out by annotation", pod("out2", "10.1.0.7", annotations={"hostmesh.io/capture": "disabled"})),
    ("invalid address", pod("junk", "not-an-ip")),
])
def test_pods_that_are_not_mesh_workloads(why, p):
    assert pod_workload(p, NODE) is None, why


def test_a_pending_pod_with_an_address_is_a_workload():
    assert pod_workload(pod("starting", "10.1.0.8", phase="Pending"), NODE)["ip"] == "10.1.0.8"


# ---- events -> registry -----------------------------------------------------------------------


def test_list_then_added_modified_deleted():
    m = Mirror()
    m.list([pod("a", "10.1.0.5", rv="8"), pod("b", "10.2.0.5", node="node-b", rv="9"),
            pod("nip", None, phase="Pending")], "10")
    assert m.state() == {"uid-a": (("10.1.0.5",), {"app": "a"}, None),
                         "uid-b": (("10.2.0.5",), {"app": "b"}, "node-b")}
    # another node's pod is not this node's: not captured or served here, only routed to
    assert [w.uid for w in m.registry.local()] == ["uid-a"]

    m.event("ADDED", pod("c", "10.1.0.7", rv="11"))
    changed, plan = m.event("MODIFIED", pod("a", "10.1.0.9", rv="12", labels={"app": "a", "v": "2"}))
    assert changed and [w.uid for w in plan.register] == ["uid-a"] and not plan.unregister
    assert m.state()["uid-a"] == (("10.1.0.9",), {"app": "a", "v": "2"}, None)
    assert m.registry.by_ip("10.1.0.5") is None and m.registry.by_ip("10.1.0.9").uid == "uid-a"

    m.event("DELETED", pod("c", "10.1.0.7", rv="13"))
    m.event("MODIFIED", pod("nip", "10.1.0.10", phase="Running", rv="14"))  # got its address
    assert set(m.state()) == {"uid-a", "uid-b", "uid-nip"}
    assert m.cache.versions["pods"] == "14"


def test_a_pod_that_finishes_or_loses_its_address_is_unregistered():
    m = Mirror()
    m.list([pod("a", "10.1.0.5"), pod("job", "10.1.0.6")], "10")
    _, plan = m.event("MODIFIED", pod("job", "10.1.0.6", phase="Succeeded", rv="11"))
    assert plan.unregister == ["uid-job"] and set(m.state()) == {"uid-a"}


def test_an_unchanged_pod_is_not_registered_again():
    m = Mirror()
    m.list([pod("a", "10.1.0.5")], "10")
    changed, plan = m.event("MODIFIED", pod("a", "10.1.0.5", rv="11"))  # e.g. a status condition
    assert changed and not plan


def test_bookmarks_and_errors_only_move_the_version():
    m = Mirror()
    m.list([pod("a", "10.1.0.5")], "10")
    before = m.state()
    changed, plan = m.event("BOOKMARK", {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "15"}})
    assert not changed and not plan and m.cache.versions["pods"] == "15" and m.state() == before
    assert not m.cache.event("pods", "ERROR", {"kind": "Status", "code": 500})
    assert m.cache.versions["pods"] == "15"


def test_410_forgets_the_version_and_the_relist_converges_exactly():
    m = Mirror()
    m.list([pod("a", "10.1.0.5"), pod("b", "10.1.0.6"), pod("c", "10.1.0.7")], "10")
    m.cache.forget("pods")
    assert m.cache.versions["pods"] is None  # the shell lists again when the version is None
    # while the watch was down: a deleted, b relabelled, d created
    plan = m.list([pod("b", "10.1.0.6", labels={"app": "b2"}), pod("c", "10.1.0.7"), pod("d", "10.1.0.8")], "30")
    assert plan.unregister == ["uid-a"] and sorted(w.uid for w in plan.register) == ["uid-b", "uid-d"]
    assert m.state() == {"uid-b": (("10.1.0.6",), {"app": "b2"}, None), "uid-c": (("10.1.0.7",), {"app": "c"}, None),
                         "uid-d": (("10.1.0.8",), {"app": "d"}, None)}
    assert m.cache.versions["pods"] == "30"


def _pods_strategy():
    names = st.sampled_from("abcdefgh")
    one = st.builds(lambda n, ip, lab, node_, phase: pod(n, f"10.1.0.{ip}", node=node_, labels={"app": lab},
                                                         phase=phase),
                    names, st.integers(1, 12), st.sampled_from(["x", "y"]), st.sampled_from([NODE, "node-b"]),
                    st.sampled_from(["Running", "Running", "Pending", "Succeeded"]))
    return st.lists(one, max_size=8)


@settings(max_examples=150, deadline=None)
@given(first=_pods_strategy(), events=st.lists(st.tuples(st.sampled_from(["ADDED", "MODIFIED", "DELETED"]),
                                                         _pods_strategy().filter(bool).map(lambda ps: ps[0]))),
       relist=_pods_strategy())
def test_a_relist_converges_to_exactly_what_a_fresh_start_would_see(first, events, relist):
    admin = workload_from_json({"uid": "cni-1", "name": "manual", "ip": "10.9.0.1"}, local_node=NODE)
    m = Mirror()
    m.registry.register(admin)  # registered through the admin API: discovery leaves it alone
    m.list(first, "1")
    for etype, obj in events:
        m.event(etype, obj)
    m.list(relist, "99")
    fresh = Mirror()
    fresh.list(relist, "99")
    assert {k: v for k, v in m.state().items() if k != "cni-1"} == fresh.state()
    assert m.registry.get("cni-1") == admin and m.owned == set(fresh.state())


# ---- addresses two workloads claim --------------------------------------------------------------


def test_a_terminating_pod_yields_its_address_to_the_new_pod():
    old = pod("old", "10.1.0.5", created="2026-11-23T06:00:00Z", deleting="2026-11-23T07:00:00Z")
    new = pod("new", "10.1.0.5", created="2026-11-23T07:00:01Z")
    d = desired(_cache([old, new]), NODE)
    assert set(d.workloads) == {"uid-new"} and d.conflicts == ["pod shop/old: 10.1.0.5 is held by pod shop/new"]
    m = Mirror()
    m.list([old], "1")
    m.event("ADDED", new)  # old keeps the address until it is gone: new takes it over
    assert set(m.state()) == {"uid-new"}
    m.event("DELETED", old)
    assert set(m.state()) == {"uid-new"}


def test_an_address_moving_between_pods_in_one_apply_is_released_before_it_is_taken():
    m = Mirror()
    m.list([pod("a", "10.1.0.5", ips=["10.1.0.5", "10.1.0.6"], created="2026-11-23T06:00:00Z")], "1")
    plan = m.list([pod("a", "10.1.0.6", created="2026-11-23T06:00:00Z"), pod("b", "10.1.0.5")], "2")
    assert [w.uid for w in plan.register] == ["uid-a", "uid-b"] and not plan.skipped
    assert m.registry.by_ip("10.1.0.5").uid == "uid-b"


def test_two_pods_trading_addresses_are_re_registered():
    m = Mirror()
    m.list([pod("a", "10.1.0.5"), pod("b", "10.1.0.6")], "1")
    plan = m.list([pod("a", "10.1.0.6"), pod("b", "10.1.0.5")], "2")
    assert plan.unregister == ["uid-a"] and [w.uid for w in plan.register] == ["uid-b", "uid-a"]
    assert m.state() == {"uid-a": (("10.1.0.6",), {"app": "a"}, None), "uid-b": (("10.1.0.5",), {"app": "b"}, None)}


def test_a_pod_whose_address_another_registration_holds_is_skipped_with_the_reason():
    r = Registry()
    r.register(workload_from_json({"uid": "cni-1", "name": "manual", "ip": "10.1.0.5"}, local_node=NODE))
    m = Mirror(r)
    plan = m.list([pod("a", "10.1.0.5"), pod("b", "10.1.0.6")], "1")
    assert plan.skipped == ["shop/a: ip: 10.1.0.5 already belongs to workload cni-1"]
    assert set(m.state()) == {"cni-1", "uid-b"} and m.owned == {"uid-b"}
    plan = m.list([pod("b", "10.1.0.6")], "2")  # never ours: nothing to unregister
    assert not plan.unregister and set(m.state()) == {"cni-1", "uid-b"}


def _cache(pods):
    c = Cache()
    c.replace("pods", pods, "1")
    return c


# ---- nodes, services, policies ------------------------------------------------------------------


def test_nodes_become_peers_and_this_node_is_kept_apart():
    assert node_entry(node("node-b", "192.0.2.2", "10.2.0.0/24", ip6="fd00:2::1")) == {
        "name": "node-b", "address": "192.0.2.2", "address6": "fd00:2::1", "pod_cidrs": ["10.2.0.0/24"]}
    c = Cache()
    c.replace("nodes", [node(NODE, "192.0.2.1", "10.1.0.0/24"), node("node-b", "192.0.2.2", "10.2.0.0/24"),
                        {"metadata": {"name": "no-address"}, "status": {"addresses": []}}], "5")
    d = desired(c, NODE)
    assert [n["name"] for n in d.nodes] == ["node-b"] and d.this_node["pod_cidrs"] == ["10.1.0.0/24"]
    c.event("nodes", "DELETED", node("node-b", "192.0.2.2", "10.2.0.0/24", rv="6"))
    assert desired(c, NODE).nodes == []


def test_services_take_ready_endpoints_and_resolve_named_ports():
    svc = service("api", "10.96.0.10", [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"},
                                        {"name": "dns", "port": 53, "protocol": "UDP"}])
    sl = endpointslice("api", ["10.1.0.5"], [{"name": "http", "port": 8080}])
    sl["endpoints"].append({"addresses": ["10.1.0.6"], "conditions": {"ready": False}})
    assert service_entries(svc, [sl]) == [{"name": "api", "namespace": "shop", "vip": "10.96.0.10", "ports": [80],
                                           "endpoints": ["10.1.0.5"], "target_port": 8080}]
    headless = service("db", "None", [{"port": 5432}])
    assert service_entries(headless, []) == []
    c = Cache()
    c.replace("services", [svc], "1")
    c.replace("endpointslices", [sl], "1")
    c.event("endpointslices", "MODIFIED", endpointslice("api", ["10.1.0.5", "10.2.0.5"], [{"name": "http", "port": 8080}]))
    assert desired(c, NODE).services[0]["endpoints"] == ["10.1.0.5", "10.2.0.5"]


def test_istio_objects_become_policy_documents():
    c = Cache()
    dry = authz("audit-me", action="DENY", rules=[{}])
    dry["metadata"]["annotations"] = {"istio.io/dry-run": "true"}
    c.replace("authorizationpolicies", [authz("allow-web", action="ALLOW", rules=[{"from": [{"source": {
        "namespaces": ["shop"]}}]}]), dry], "3")
    c.replace("peerauthentications", [{"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                                       "metadata": {"name": "default", "namespace": "istio-system"},
                                       "spec": {"mtls": {"mode": "STRICT"}}}], "3")
    docs = desired(c, NODE).policy_docs
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("AuthorizationPolicy", "allow-web"), ("AuthorizationPolicy", "audit-me"), ("PeerAuthentication", "default")]
    # only what the policy loader knows: no uid/resourceVersion/generation (unknown fields are errors there)
    assert docs[1]["metadata"] == {"name": "audit-me", "namespace": "shop", "annotations": {"istio.io/dry-run": "true"}}
    assert len(load_documents(json.dumps(docs), "k8s", "istio-system")) == 3


def test_the_config_s_peers_and_services_stay_next_to_the_discovered_ones():
    static_nodes = [PeerNode(name="metal-1", address="192.0.2.50", pod_cidrs=["10.50.0.0/24"]),
                    PeerNode(name="node-b", address="192.0.2.99")]
    found = [PeerNode(name="node-b", address="192.0.2.2", pod_cidrs=["10.2.0.0/24"])]
    assert [(n.name, n.address) for n in merge_nodes(static_nodes, found)] == [
        ("metal-1", "192.0.2.50"), ("node-b", "192.0.2.2")]
    static_svcs = [ServiceConfig(name="legacy", vip="10.96.0.10", ports=[80], endpoints=["192.0.2.50"]),
                   ServiceConfig(name="metal", vip="10.99.0.1", ports=[443], endpoints=["192.0.2.50"])]
    found_svcs = [ServiceConfig(name="api", namespace="shop", vip="10.96.0.10", ports=[80], endpoints=["10.1.0.5"])]
    assert [s.name for s in merge_services(static_svcs, found_svcs)] == ["metal", "api"]


# ---- retry schedule -----------------------------------------------------------------------------


def test_backoff_doubles_to_the_cap_with_jitter_and_resets():
    b = Backoff(0.5, 4.0)
    assert [b.next(0.5) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next(0.0) == 0.25 and b.next(0.999) == pytest.approx(1.499)  # jitter: x0.5 to x1.5
    b = Backoff(0.5, 4.0)
    assert max(b.next(0.999) for _ in range(10)) == 4.0  # capped after the jitter too


# ---- one changed pod: the plan without a rehearsal (reconcile._one_in_place) ---------------

def _body(uid, ip, **kw):
    b = {"uid": uid, "name": uid, "namespace": "shop", "service_account": "default", "ip": ip, "ips": [ip],
         "labels": {"app": "a"}, "http_ports": [], "node": None}
    return {**b, **kw}


@pytest.mark.parametrize("why, body, owned", [
    ("a label changed", _body("u1", "10.1.0.5", labels={"app": "b"}), {"u1"}),
    ("nothing changed", _body("u1", "10.1.0.5"), {"u1"}),
    ("its account changed", _body("u1", "10.1.0.5", service_account="api"), {"u1"}),
    ("it moved to another node", _body("u1", "10.1.0.5", node="node-b"), {"u1"}),  # the first four: in place
    ("its address changed", _body("u1", "10.1.0.9"), {"u1"}),
    ("it takes an address another pod holds", _body("u1", "10.1.0.6"), {"u1", "u2"}),
    ("it gained an address", _body("u1", "10.1.0.5", ips=["10.1.0.5", "fd00::5"]), {"u1"}),
    ("it is gone", None, {"u1"}),
    ("not ours (the admin API registered it)", _body("u1", "10.1.0.5", labels={"app": "b"}), set()),
    ("new", _body("u3", "10.1.0.7"), {"u1"}),
    ("invalid now", _body("u1", "10.1.0.5", name="a b"), {"u1"}),
])
def test_one_changed_pod_plans_what_the_rehearsal_plans(why, body, owned):
    from agent.k8s.reconcile import _one_in_place, _rehearse, plan_changes

    reg = Registry()
    reg.register(workload_from_json(_body("u1", "10.1.0.5"), local_node=NODE))
    reg.register(workload_from_json(_body("u2", "10.1.0.6"), local_node=NODE))
    uid = body["uid"] if body else "u1"
    got = plan_changes({uid: body}, owned, reg, NODE)
    assert got == _rehearse({uid: body}, owned, reg, NODE), why
    in_place = why in ("a label changed", "nothing changed", "its account changed", "it moved to another node")
    assert (_one_in_place({uid: body}, owned, reg, NODE) is not None) == in_place
