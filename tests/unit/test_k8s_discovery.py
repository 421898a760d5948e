"""Kubernetes discovery (agent.k8s.discovery, the trio shell with the official client)
against a server that replays real API list and watch responses (agent.bench.fakeapi;
no API server runs here): the registry, peers, services and policies end up exactly as the replayed cluster
describes, through bookmarks, 410 Gone, a dropped watch and API errors. The pure core
has its own tests (test_k8s_reconcile.py)."""

from __future__ import annotations

import json

import pytest
import trio

from agent.app import Agent
from agent.bench.fakeapi import FakeApi as Replay
from agent.config import Config
from agent.k8s import discovery as disc
from tests.unit.k8s_objects import NODE, authz, endpointslice, lst, node, pod, service

# ---- the shell against a replay server ------------------------------------------------------


@pytest.fixture
def replay():
    r = Replay()
    yield r
    r.close()


def config(url: str, **extra) -> Config:
    return Config.from_obj({"node": {"name": NODE, "address": "192.0.2.1"}, **extra,
                            "kubernetes": {"enabled": True, "api_server": url, "token_path": "/nonexistent",
                                           "backoff_initial_s": 0.05, "backoff_max_s": 0.2}})


def run_discovery(replay: Replay, until, timeout: float = 8.0, agent: Agent | None = None) -> Agent:
    """The real shell (start: first list; run: apply loop and one watch per kind) on a
    real Agent (registry, policies, routing view; no data plane) until ``until`` holds."""
    agent = agent or Agent(config(replay.url))

    async def main():
        with trio.fail_after(timeout):
            async with trio.open_nursery() as n:
                d = await disc.start(agent, n)
                await disc.run(d, n)
                while not until(agent, d):
                    await trio.sleep(0.02)
                n.cancel_scope.cancel()

    trio.run(main)
    return agent


PODS = "/api/v1/pods"
NODES = "/api/v1/nodes"
AUTHZ = "/apis/security.istio.io/v1/authorizationpolicies"
PEERAUTHN = "/apis/security.istio.io/v1/peerauthentications"


def uids(agent) -> set[str]:
    return {w.uid for w in agent.registry}


def test_list_watch_bookmark_and_resume_from_the_last_version(replay):
    replay.lists[NODES] = [lst("NodeList", [node(NODE, "192.0.2.1", "10.1.0.0/24"),
                                            node("node-b", "192.0.2.2", "10.2.0.0/24")], "5")]
    replay.lists[PODS] = [lst("PodList", [pod("a", "10.1.0.5", rv="8"), pod("b", "10.2.0.5", node="node-b", rv="9"),
                                          pod("hn", "192.0.2.1", host_network=True, rv="9")], "10")]
    replay.watches[PODS] = [
        [{"type": "ADDED", "object": pod("c", "10.1.0.7", rv="11")},
         {"type": "MODIFIED", "object": pod("a", "10.1.0.5", rv="12", labels={"app": "a", "v": "2"})},
         {"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "20"}}},
         "end"],
        [{"type": "DELETED", "object": pod("b", "10.2.0.5", node="node-b", rv="21")}],
    ]
    agent = run_discovery(replay, lambda a, d: uids(a) == {"uid-a", "uid-c"})
    assert replay.watch_versions(PODS)[:2] == ["10", "20"]  # resumed after the bookmark
    q = next(q for p, q in replay.seen if p == PODS and q.get("watch"))
    assert q["allowWatchBookmarks"] == "true" and q["timeoutSeconds"] == "300"
    a = agent.registry.get("uid-a")
    assert dict(a.labels) == {"app": "a", "v": "2"} and a.node is None and a.identity_key == ("shop", "web")
    assert [n.name for n in agent.config.cluster.nodes] == ["node-b"]
    assert [p.name for p in agent.view.peers] == ["node-b"]  # the routing view was rebuilt
    assert agent.config.cluster.pod_cidrs == ["10.1.0.0/24"]  # this node's, from its Node object
    assert agent.counters["k8s_watch_restarts"] >= 1


@pytest.mark.parametrize("gone", ["event", "status"])
def test_410_gone_relists_and_drops_what_vanished(replay, gone):
    replay.lists[PODS] = [lst("PodList", [pod("a", "10.1.0.5"), pod("b", "10.1.0.6")], "10"),
                          lst("PodList", [pod("b", "10.1.0.6", labels={"app": "b2"}), pod("d", "10.1.0.8")], "30")]
    first = ([{"type": "ADDED", "object": pod("x", "10.1.0.9", rv="11")},
              {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                           "message": "too old resource version: 10 (25)", "reason": "Expired",
                                           "code": 410}}]
             if gone == "event" else [("status", 410)])
    replay.watches[PODS] = [first]
    agent = run_discovery(replay, lambda a, d: d.counts["relists_410"] >= 1 and uids(a) == {"uid-b", "uid-d"})
    assert replay.watch_versions(PODS)[:2] == ["10", "30"]  # watched again from the relist
    assert agent.registry.get("uid-a") is None  # deleted while the watch was down: gone
    assert dict(agent.registry.get("uid-b").labels) == {"app": "b2"}  # changed meanwhile: current
    assert agent.counters["k8s_relists_410"] == 1 and agent.counters["k8s_lists"] == 9  # 8 kinds + 1 relist


def test_a_dropped_watch_resumes_from_the_last_version_seen(replay):
    replay.lists[PODS] = [lst("PodList", [pod("a", "10.1.0.5")], "10")]
    replay.watches[PODS] = [
        [{"type": "ADDED", "object": pod("e", "10.1.0.9", rv="14")}, "drop"],
        [{"type": "DELETED", "object": pod("a", "10.1.0.5", rv="15")}],
    ]
    agent = run_discovery(replay, lambda a, d: uids(a) == {"uid-e"})
    assert replay.watch_versions(PODS)[:2] == ["10", "14"]
    assert sum(1 for p, q in replay.seen if p == PODS and not q.get("watch")) == 1  # resumed, not relisted
    assert agent.discovery.counts["errors"] >= 1  # the drop was seen as an error, then resumed


def test_api_errors_back_off_and_retry_without_relisting(replay):
    replay.lists[PODS] = [("status", 500), lst("PodList", [pod("a", "10.1.0.5")], "10")]
    replay.watches[PODS] = [
        [("status", 503)],
        [{"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "etcdserver: leader changed"}}],
        [{"type": "ADDED", "object": pod("b", "10.1.0.6", rv="11")}],
    ]
    del replay.lists[AUTHZ], replay.lists[PEERAUTHN]  # no Istio CRDs: 404, not a failure to start
    agent = run_discovery(replay, lambda a, d: uids(a) == {"uid-a", "uid-b"})
    assert replay.watch_versions(PODS)[:3] == ["10", "10", "10"]  # each retry from the same version
    assert sum(1 for p, q in replay.seen if p == PODS and not q.get("watch")) == 2  # the failed list + one
    assert agent.discovery.counts["errors"] >= 3 and agent.counters["k8s_errors"] >= 3
    assert agent.discovery.counts["relists_410"] == 0 and len(agent.policies) == 0


def test_what_the_config_and_the_admin_api_registered_stays(replay, tmp_path):
    cfg = config(replay.url, state_dir=str(tmp_path), cluster={"nodes": [{"name": "metal-1", "address": "192.0.2.50",
                                                 "pod_cidrs": ["10.50.0.0/24"]}]})
    agent = Agent(cfg)
    agent.add_workload({"uid": "cni-1", "name": "manual", "namespace": "shop", "ip": "10.1.0.5"})
    replay.lists[NODES] = [lst("NodeList", [node("node-b", "192.0.2.2", "10.2.0.0/24")], "5")]
    replay.lists[PODS] = [lst("PodList", [pod("a", "10.1.0.5"), pod("b", "10.1.0.6")], "10")]
    replay.watches[PODS] = [[{"type": "DELETED", "object": pod("b", "10.1.0.6", rv="11")}]]
    run_discovery(replay, lambda a, d: d.counts["events"] >= 1 and uids(a) == {"cni-1"}, agent=agent)
    # pod a's address belongs to the admin API's workload: a is skipped (counted), not fatal
    assert agent.counters["k8s_pods_skipped"] == 1 and agent.registry.by_ip("10.1.0.5").uid == "cni-1"
    assert [n.name for n in agent.config.cluster.nodes] == ["metal-1", "node-b"]


def test_policies_services_and_a_bad_policy_is_skipped(replay):
    bad = authz("typo", rv="4", action="DENY", rulez=[])
    replay.lists[AUTHZ] = [lst("AuthorizationPolicyList", [authz("deny-all", rv="3", action="DENY", rules=[{}]), bad],
                               "5")]
    replay.watches[AUTHZ] = [[{"type": "DELETED", "object": bad},
                              {"type": "ADDED", "object": authz("allow-web", rv="6", selector={
                                  "matchLabels": {"app": "web"}}, rules=[{"from": [{"source": {
                                      "principals": ["cluster.local/ns/shop/sa/client"]}}]}])}]]
    replay.lists["/api/v1/services"] = [lst("ServiceList", [service("api", "10.96.0.10", [
        {"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}])], "2")]
    replay.lists["/apis/discovery.k8s.io/v1/endpointslices"] = [lst("EndpointSliceList", [
        endpointslice("api", ["10.1.0.5"], [{"name": "http", "port": 8080, "protocol": "TCP"}])], "2")]
    replay.lists[PODS] = [lst("PodList", [], "1")]
    names = lambda a: sorted(p["name"] for p in a.policies.list())  # noqa: E731
    agent = run_discovery(replay, lambda a, d: names(a) == ["allow-web", "deny-all"])
    assert set(agent.policies.sources()) == {"kubernetes"}
    assert agent.discovery.counts["policies_rejected"] == 1  # the typo, once (then deleted)
    assert agent.discovery.counts["policies_fail_closed"] == 1  # held as DENY all until then
    assert [(s.vip, s.ports, s.endpoints, s.target_port) for s in agent.config.cluster.services] == [
        ("10.96.0.10", [80], ["10.1.0.5"], 8080)]
    assert agent.view.services[("10.96.0.10", 80)].endpoints == ("10.1.0.5",)


def test_destination_rules_and_virtual_services_are_watched(replay):
    dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
          "metadata": {"name": "api", "namespace": "shop", "resourceVersion": "3"},
          "spec": {"host": "api", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}}
    bad = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": "typo", "namespace": "shop", "resourceVersion": "4"}, "spec": {"hostz": ["api"]}}
    replay.lists["/apis/networking.istio.io/v1/destinationrules"] = [lst("DestinationRuleList", [dr], "5")]
    replay.lists["/apis/networking.istio.io/v1/virtualservices"] = [lst("VirtualServiceList", [bad], "5")]
    replay.lists[PODS] = [lst("PodList", [], "1")]
    agent = run_discovery(replay, lambda a, d: len(a.traffic) == 1)
    assert [(r["kind"], r["name"], r["source"]) for r in agent.traffic.list()] == [
        ("DestinationRule", "api", "kubernetes")]
    assert agent.discovery.counts["policies_rejected"] == 1


def test_a_reload_keeps_the_discovered_peers_and_takes_the_config_s_new_ones(tmp_path):
    from agent.config import load_config

    def write(static_peer: str) -> None:
        path.write_text(json.dumps({
            "node": {"name": NODE, "address": "192.0.2.1"}, "state_dir": str(tmp_path),
            "cluster": {"nodes": [{"name": static_peer, "address": "192.0.2.50", "pod_cidrs": ["10.50.0.0/24"]}]},
            "kubernetes": {"enabled": True, "api_server": "http://127.0.0.1:9"}}))

    path = tmp_path / "hostmesh.yaml"
    write("metal-1")
    agent = Agent(load_config(str(path)), str(path))
    d = agent.discovery = disc.Discovery(agent, agent.config.kubernetes, NODE)
    d.cache.replace("nodes", [node("node-b", "192.0.2.2", "10.2.0.0/24")], "5")
    d.cache.replace("pods", [pod("far", "10.2.0.9", node="node-b")], "5")
    d.apply()
    assert [n.name for n in agent.config.cluster.nodes] == ["metal-1", "node-b"]
    write("metal-2")
    trio.run(agent.reload)
    assert [n.name for n in agent.config.cluster.nodes] == ["metal-2", "node-b"]
    assert [p.name for p in agent.view.peers] == ["metal-2", "node-b"]
    assert {w.uid for w in agent.registry} == {"uid-far"}  # the config's (empty) workloads do not touch it


def test_status_only_events_move_the_version_and_change_nothing(replay):
    replay.lists[PODS] = [lst("PodList", [pod("a", "10.1.0.5", rv="8")], "10")]
    steps = []
    for rv in range(11, 31):
        p = pod("a", "10.1.0.5", rv=str(rv))
        p["status"]["conditions"][0]["lastProbeTime"] = f"2026-11-23T08:00:{rv}Z"
        steps.append({"type": "MODIFIED", "object": p})
    replay.watches[PODS] = [steps + ["end"]]
    seen = {}

    def until(a, d):
        seen.update(events=d.counts["events"], version=d.versions["pods"])
        # and the watch that follows the ended one has been asked for (it was a race)
        return d.counts["events"] >= 20 and d.versions["pods"] == "30" and len(replay.watch_versions(PODS)) >= 2

    agent = run_discovery(replay, until)
    assert seen == {"events": 20, "version": "30"} and uids(agent) == {"uid-a"}
    assert replay.watch_versions(PODS)[:2] == ["10", "30"]  # resumed from the last one


# ---- a policy that changes in place (agent.rbac.store.PolicyStore.prepare_replace) ---------

def _policy_agent(objs):
    agent = Agent(config("http://127.0.0.1:1"))
    d = disc.Discovery(agent, agent.config.kubernetes, NODE)
    d.index.replace("authorizationpolicies", objs, "1")
    d.apply()
    return agent, d


def test_a_modified_policy_is_replaced_in_place_and_equals_a_fresh_list(monkeypatch):
    first = [authz("a", action="DENY", rules=[{}]), authz("b", rules=[{"from": [{"source": {"namespaces": ["x"]}}]}]),
             authz("c", ns="web", rules=[{}])]
    agent, d = _policy_agent(first)
    changed = authz("b", rv="2", rules=[{"from": [{"source": {"namespaces": ["y"]}}]}])
    d.index.event("authorizationpolicies", "MODIFIED", changed)
    store = agent.policies
    monkeypatch.setattr(store, "prepare_sources", lambda *a, **k: pytest.fail("rebuilt the whole source"))
    d.apply()
    monkeypatch.undo()
    fresh, _ = _policy_agent([first[0], changed, first[2]])
    got, want = store.snapshot(), fresh.policies.snapshot()
    assert list(got.docs) == list(want.docs) and store.list() == fresh.policies.list()
    assert {ns: [p.ref for p in ps] for ns, ps in got.by_ns.items()} == {
        ns: [p.ref for p in ps] for ns, ps in want.by_ns.items()}
    assert [p for ps in got.by_ns.values() for p in ps] == [p for ps in want.by_ns.values() for p in ps]


@pytest.mark.parametrize("event", [
    ("ADDED", authz("d", rv="2", rules=[{}])),              # a new name: appended by a rebuild
    ("DELETED", authz("a", rv="2")),                        # gone
    ("MODIFIED", authz("a", rv="2", action="DENY", rulez=[])),  # now invalid: its fail-closed stand-in
])
def test_a_policy_that_comes_goes_or_breaks_rebuilds_the_source(event):
    first = [authz("a", action="DENY", rules=[{}]), authz("b", rules=[{}])]
    agent, d = _policy_agent(first)
    d.index.event("authorizationpolicies", *event)
    assert d.applier.replaced == []
    d.apply()
    rest = [o for o in first if o["metadata"]["name"] != event[1]["metadata"]["name"]]
    fresh, _ = _policy_agent(rest + ([event[1]] if event[0] != "DELETED" else []))  # as a fresh list loads it
    assert agent.policies.list() == fresh.policies.list()
    assert list(agent.policies.snapshot().docs) == list(fresh.policies.snapshot().docs)


# ---- where a change is applied: in the hand-over after a quiet spell, else by apply_loop ---

def test_a_change_after_a_quiet_spell_is_applied_in_the_hand_over_a_burst_by_the_loop():
    agent = Agent(config("http://127.0.0.1:1"))
    d = disc.Discovery(agent, agent.config.kubernetes, NODE)
    seen = {}

    async def main():
        async with trio.open_nursery() as n:
            await n.start(d.apply_loop)
            d.index.event("pods", "ADDED", pod("a", "10.1.0.5"))
            d._delivered()  # quiet so far: applied before it returns, no task involved
            seen["first"] = (uids(agent), d.counts["applies"], d._changed.is_set())
            d.index.event("pods", "ADDED", pod("b", "10.1.0.6"))
            d._delivered()  # within COALESCE_S of the last apply: left to apply_loop
            seen["burst"] = (uids(agent), d._changed.is_set())
            with trio.fail_after(5):
                while len(agent.registry) < 2:
                    await trio.sleep(disc.COALESCE_S)
            await trio.sleep(disc.COALESCE_S * 2)  # the window since that apply is over too
            seen["after"] = (uids(agent), d.counts["applies"])
            d.index.event("nodes", "ADDED", node("node-b", "192.0.2.2", "10.2.0.0/24"))
            d._delivered()  # a node change rebuilds the peers: never in the hand-over
            seen["node"] = d._changed.is_set()
            n.cancel_scope.cancel()

    trio.run(main)
    assert seen["first"] == ({"uid-a"}, 1, False)
    assert seen["burst"] == ({"uid-a"}, True)
    assert seen["after"] == ({"uid-a", "uid-b"}, 2)
    assert seen["node"] is True


def test_an_apply_that_fails_in_the_hand_over_is_logged_and_everything_is_applied_again(monkeypatch):
    agent = Agent(config("http://127.0.0.1:1"))
    d = disc.Discovery(agent, agent.config.kubernetes, NODE)
    d.index.event("pods", "ADDED", pod("a", "10.1.0.5"))
    d.apply()
    real, calls = d.applier.steps, []

    def broken(index, c, **kw):
        calls.append(sorted(c.workloads))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(index, c, **kw)

    monkeypatch.setattr(d.applier, "steps", broken)

    async def main():
        async with trio.open_nursery() as n:
            await n.start(d.apply_loop)
            d.index.event("pods", "DELETED", pod("a", "10.1.0.5"))
            d.index.event("pods", "ADDED", pod("b", "10.1.0.6"))
            d._delivered()  # fails: logged, counted, everything pending again, the loop runs
            with trio.fail_after(5):
                while uids(agent) != {"uid-b"}:
                    await trio.sleep(0.01)
            n.cancel_scope.cancel()

    trio.run(main)
    assert d.counts["errors"] == 1 and calls == [["uid-a", "uid-b"], ["uid-a", "uid-b"]]
    assert d.owned == {"uid-b"}
