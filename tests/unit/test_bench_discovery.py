"""The discovery benchmark's equipment (agent.bench.cluster, agent.bench.fakeapi) and
its targets: objects of the size the issue measured with, pagination as the API server
does it, and the 20,000-pod targets met or not from the rows."""

from __future__ import annotations

import json
import urllib.request

from agent.bench.cluster import NODES, POLICIES, Cluster
from agent.bench.fakeapi import KIND_PATHS, FakeApi, Serialised
from agent.bench.targets import compute
from agent.k8s.model import slim


def test_the_synthetic_cluster_is_realistic_and_slims_to_little():
    c = Cluster(100)
    lists = c.lists()
    assert [len(lists[k]) for k in ("pods", "nodes", "services", "endpointslices", "authorizationpolicies")] == [
        100, NODES, 10, 10, POLICIES]
    pod = json.loads(lists["pods"][7])
    assert 6500 <= len(lists["pods"][7]) <= 7500 and pod["metadata"]["managedFields"]
    view = slim("pods", pod, "node-0")
    assert view.body["ips"] == [Cluster.ip(7)] and view.body["node"] == "node-7"
    assert len(json.dumps(view.body)) < 400  # what discovery keeps of ~7 KB
    kind, line, rv = c.event("status", 1)
    assert kind == "pods" and slim("pods", json.loads(line)["object"], "node-0") == slim(
        "pods", json.loads(c.pod((1 * 104729) % 100)), "node-0")  # a status change: equal slims


def test_lists_are_paginated_with_continue_tokens():
    api = FakeApi()
    try:
        c = Cluster(25)
        path, kind = KIND_PATHS["pods"]
        api.lists[path] = [Serialised(kind, c.lists()["pods"], "77")]
        names, token = [], None
        while True:
            url = f"{api.url}{path}?limit=10" + (f"&continue={token}" if token else "")
            body = json.loads(urllib.request.urlopen(url, timeout=5).read())
            names += [i["metadata"]["name"] for i in body["items"]]
            token = body["metadata"].get("continue")
            assert body["metadata"]["resourceVersion"] == "77"
            if not token:
                break
        assert len(names) == 25 == len(set(names))
    finally:
        api.close()


def test_discovery_targets_at_20000_pods():
    rows = [{"scenario": "discovery-20000", "path": "hostmesh", "metric": m, "value": v} for m, v in (
        ("sync_s", 2.5), ("kib_per_pod", 3.4), ("relist_peak_mib", 180), ("event_p99_ms", 40),
        ("cpu_ms_per_event", 0.7), ("cpu_ms_per_irrelevant_event", 0.04), ("probe_p99_ms", 5))]
    t = {x["name"]: x for x in compute(rows) if x["name"].startswith("discovery")}
    assert {k.split()[-1]: v["met"] for k, v in t.items()} == {
        "sync_s": True, "kib_per_pod": False, "relist_peak_mib": True, "event_p99_ms": True,
        "cpu_ms_per_event": False, "cpu_ms_per_irrelevant_event": True, "probe_p99_ms": True}
    assert all(x["note"] for x in compute([]) if x["name"].startswith("discovery"))
