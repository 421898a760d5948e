"""Service and EndpointSlice events change the routing view entry by entry (agent.k8s.apply
→ Agent.cluster_changed → agent.proxy.plan.with_services): after every event the view
equals one built from scratch out of the same config, and no event rebuilds it whole."""

from __future__ import annotations

import pytest

from agent.app import Agent
from agent.config import Config
from agent.k8s import discovery as disc
from agent.proxy import plan
from tests.unit.k8s_objects import NODE, endpointslice, service

HTTP = [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
TWO = HTTP + [{"name": "grpc", "port": 9090, "targetPort": 9091, "protocol": "TCP"}]
EP = [{"name": "http", "port": 8080, "protocol": "TCP"}]

EVENTS = [
    ("endpointslices", "MODIFIED", endpointslice("web", ["10.1.0.5", "10.1.0.7"], EP, rv="2")),
    ("endpointslices", "MODIFIED", endpointslice("web", ["10.1.0.5", "10.1.0.7"], EP, rv="3", ready=False)),
    ("services", "MODIFIED", service("api", "10.96.0.11", TWO, rv="4")),  # a second port
    ("services", "ADDED", service("db", "10.96.0.12", HTTP, ns="data", rv="5")),
    ("endpointslices", "ADDED", endpointslice("db", ["10.1.0.9"], EP, ns="data", rv="6")),
    ("services", "MODIFIED", service("api", "10.96.0.21", HTTP, rv="7")),  # the VIP moves
    ("endpointslices", "DELETED", endpointslice("web", [], EP, rv="8")),
    ("services", "DELETED", service("web", "10.96.0.10", HTTP, rv="9")),
    ("services", "DELETED", service("db", "10.96.0.12", HTTP, ns="data", rv="10")),
]


def as_values(view):
    return dict(view.services), dict(view.by_key)


def test_every_service_event_leaves_the_view_a_full_rebuild_would(monkeypatch):
    agent = Agent(Config.from_obj({"node": {"name": NODE, "address": "192.0.2.1"}, "kubernetes": {
        "enabled": True, "api_server": "http://127.0.0.1:1", "token_path": "/nonexistent"}}))
    d = disc.Discovery(agent, agent.config.kubernetes, NODE)
    d.index.replace("services", [service("web", "10.96.0.10", HTTP), service("api", "10.96.0.11", HTTP)], "1")
    d.index.replace("endpointslices", [endpointslice("web", ["10.1.0.5"], EP), endpointslice("api", ["10.1.0.6"], EP)],
                    "1")
    d.apply()
    assert agent.view.services[("10.96.0.10", 80)].endpoints == ("10.1.0.5",)
    monkeypatch.setattr(plan, "build_view", lambda *a, **k: pytest.fail("the whole view was rebuilt"))
    monkeypatch.setattr("agent.app.build_view", plan.build_view)
    seen = []
    for kind, typ, obj in EVENTS:
        before = agent.view
        kept = as_values(before)
        d.index.event(kind, typ, obj)
        d.apply()
        monkeypatch.undo()
        want = plan.build_view(agent.config, agent.registry, agent.traffic)
        monkeypatch.setattr(plan, "build_view", lambda *a, **k: pytest.fail("the whole view was rebuilt"))
        monkeypatch.setattr("agent.app.build_view", plan.build_view)
        assert as_values(agent.view) == as_values(want), (kind, typ)
        assert as_values(before) == kept  # the view a decision in flight holds did not change
        seen.append(sorted(f"{k[0]}:{k[1]}={','.join(s.endpoints)}" for k, s in agent.view.services.items()))
    assert seen[0] == ["10.96.0.10:80=10.1.0.5,10.1.0.7", "10.96.0.11:80=10.1.0.6"]
    assert seen[1] == ["10.96.0.10:80=", "10.96.0.11:80=10.1.0.6"]
    assert seen[5] == ["10.96.0.10:80=", "10.96.0.12:80=10.1.0.9", "10.96.0.21:80=10.1.0.6"]
    assert seen[-1] == ["10.96.0.21:80=10.1.0.6"]


def test_an_endpoint_change_patches_cluster_services_in_place_next_to_the_config_s():
    """cluster.services (what a full rebuild reads) stays the merge of the config's and
    the API's services; an endpoint-only change replaces its entries where they stand
    (the list is not copied: O(change)), anything else merges again."""
    from agent.k8s.reconcile import merge_services

    static = {"name": "metal", "namespace": "ops", "vip": "10.96.9.9", "ports": [80], "endpoints": ["192.0.2.7"]}
    agent = Agent(Config.from_obj({"node": {"name": NODE, "address": "192.0.2.1"}, "cluster": {
        "services": [static]}, "kubernetes": {"enabled": True, "api_server": "http://127.0.0.1:1",
                                              "token_path": "/nonexistent"}}))
    d = disc.Discovery(agent, agent.config.kubernetes, NODE)
    d.index.replace("services", [service("web", "10.96.0.10", HTTP), service("api", "10.96.0.11", HTTP)], "1")
    d.index.replace("endpointslices", [endpointslice("web", ["10.1.0.5"], EP), endpointslice("api", ["10.1.0.6"], EP)],
                    "1")
    d.apply(remerge=True)
    steps = [(endpointslice("api", ["10.1.0.6", "10.1.0.8"], EP, rv="2"), True),
             (endpointslice("web", ["10.1.0.5"], EP, rv="3", ready=False), True),
             (service("api", "10.96.0.31", HTTP, rv="4"), False),  # the VIP moves: merged again
             (endpointslice("api", ["10.1.0.8"], EP, rv="5"), True)]
    for obj, in_place in steps:
        listed = agent.config.cluster.services
        d.index.event("services" if obj["kind"] == "Service" else "endpointslices", "MODIFIED", obj)
        d.apply()
        now = agent.config.cluster.services
        assert (now is listed) == in_place
        assert now == merge_services(d.applier.static[1], d.applier._flat.values())
        assert as_values(agent.view) == as_values(plan.build_view(agent.config, agent.registry, agent.traffic))
    assert [(s.name, s.endpoints) for s in agent.config.cluster.services] == [
        ("metal", ["192.0.2.7"]), ("web", []), ("api", ["10.1.0.8"])]


ENTRY = {"name": "web", "namespace": "default", "vip": "10.96.0.10", "ports": [80], "endpoints": ["10.1.0.5"],
         "target_port": 8080}


@pytest.mark.parametrize("change, reused", [
    ({"endpoints": ["10.1.0.5", "10.1.0.7"]}, True),  # readiness: the entry kept, new endpoints
    ({"endpoints": []}, True),
    ({}, True),  # nothing changed: the same object
    ({"endpoints": ["10.1.0.5", 7]}, False),  # not strings: validated (and refused) afresh
    ({"vip": "10.96.0.11"}, False),
    ({"ports": [81], "endpoints": []}, False),
    ({"target_port": None}, False),
])
def test_an_endpoints_only_change_reuses_the_validated_entry(change, reused):
    from agent.config import ServiceConfig
    from agent.k8s.apply import _endpoints_changed

    was = ServiceConfig.from_obj(ENTRY)
    entry = dict(ENTRY, **change)
    got = _endpoints_changed((ENTRY, was), entry)
    if not reused:
        assert got is None
        return
    assert got == ServiceConfig.from_obj(entry)
    assert (got is was) == (change == {}) and was.endpoints == ENTRY["endpoints"]  # the old one unchanged
