"""A small Kubernetes policy change put in force on the event loop (agent.k8s.applying
``_commit_small``) evaluates again only the live connections to workloads the changed
policies select (agent.rbac.store.PolicyStore.affects); a connection the change now
denies is closed, one it cannot affect is not even evaluated."""

from __future__ import annotations

import time

import pytest

from agent.app import Agent
from agent.k8s import discovery as disc
from agent.proxy import enforce
from agent.proxy.conns import Conn
from agent.state.workloads import workload_from_json
from tests.unit.k8s_objects import NODE, authz
from tests.unit.test_k8s_discovery import config

CLIENT = "cluster.local/ns/front/sa/client"


def allow(name, app, principal=CLIENT, ns="shop", rv="1"):
    return authz(name, ns=ns, rv=rv, selector={"matchLabels": {"app": app}},
                 rules=[{"from": [{"source": {"principals": [principal]}}]}])


def live(agent, name, app, ns="shop"):
    w = workload_from_json({"uid": f"u-{name}", "name": name, "namespace": ns, "ip": f"10.1.0.{len(agent.conns) + 5}",
                            "labels": {"app": app}})
    c = Conn("inbound", "tunnel", "10.1.0.9", 40000, w.ip, 8080, time.time(), time.monotonic(), dst=w,
             src_principal=f"spiffe://{CLIENT}", enforced_here=True)
    return agent.conns.add(c)


def commit(d, *events):
    for etype, obj in events:
        d.index.event("authorizationpolicies", etype, obj)
    for _ in d.applier.steps(d.index, d.index.take()):
        pass
    assert d._commit_small()


@pytest.mark.parametrize(("events", "evaluated", "closed"), [
    ([("MODIFIED", allow("web", "web", principal="cluster.local/ns/x/sa/y", rv="2"))], {"web"}, {"web"}),
    ([("MODIFIED", authz("web", rv="2", selector={"matchLabels": {"app": "web"}},
                         rules=[{"from": [{"source": {"principals": [CLIENT, "cluster.local/ns/x/sa/y"]}}]}]))],
     {"web"}, set()),                                                              # still allowed
    ([("MODIFIED", allow("web", "web", rv="2"))], set(), set()),                 # nothing discovery reads changed
    ([("DELETED", allow("db", "db", rv="2"))], {"db"}, set()),                   # no ALLOW left: allowed
    ([("ADDED", authz("deny", rv="2", action="DENY", rules=[{}]))], {"web", "db"}, {"web", "db"}),
    ([("ADDED", allow("x", "x", ns="web", rv="2"))], set(), set()),             # another namespace
    ([("ADDED", authz("root", ns="istio-system", rv="2", action="DENY",
                      selector={"matchLabels": {"app": "db"}}, rules=[{}]))], {"web", "db", "other"}, {"db"}),
])
def test_only_the_connections_the_change_can_affect_are_evaluated(monkeypatch, events, evaluated, closed):
    agent = Agent(config("http://127.0.0.1:1"))
    d = disc.Discovery(agent, agent.config.kubernetes, NODE)
    d.index.replace("authorizationpolicies", [allow("web", "web"), allow("db", "db")], "1")
    d.apply()
    conns = {"web": live(agent, "web", "web"), "db": live(agent, "db", "db"), "other": live(agent, "o", "o", ns="else")}
    seen = []
    real = enforce.recheck
    monkeypatch.setattr(enforce, "recheck", lambda a, c: seen.append(c.dst.name) or real(a, c))
    commit(d, *events)
    names = {c.dst.name: n for n, c in conns.items()}
    assert {names[s] for s in seen} == evaluated
    assert {n for n, c in conns.items() if c.close_reason == "policy_changed"} == closed


def test_a_change_the_store_cannot_make_in_place_in_a_large_set_goes_beside_the_loop(monkeypatch):
    from agent.k8s import applying

    monkeypatch.setattr(applying, "INLINE_POLICY_SET_MAX", 1)  # "large": more than one policy
    agent = Agent(config("http://127.0.0.1:1"))
    d = disc.Discovery(agent, agent.config.kubernetes, NODE)
    d.index.replace("authorizationpolicies", [allow("web", "web"), allow("db", "db")], "1")
    d.apply()
    gen = agent.policies.generation
    commit(d, ("MODIFIED", allow("web", "web", principal="cluster.local/ns/x/sa/y", rv="2")))  # in place: here
    assert agent.policies.generation == gen + 1
    peer = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "strict", "namespace": "shop", "resourceVersion": "3"}, "spec": {"mtls": {"mode": "STRICT"}}}
    d.index.event("peerauthentications", "ADDED", peer)
    for _ in d.applier.steps(d.index, d.index.take()):
        pass
    assert d._commit_small() is False  # a rebuild of the source: left to the thread, nothing lost
    assert agent.policies.generation == gen + 1 and d.applier.policies_dirty == 1 and d.applier.replaced
    d.applier.commit_policies()
    assert [p["name"] for p in agent.policies.list()] == ["db", "web", "strict"]


def test_a_peer_authentication_made_invalid_is_held_as_strict_until_fixed():
    from agent.rbac.evaluate import mtls_mode

    agent = Agent(config("http://127.0.0.1:1"))
    d = disc.Discovery(agent, agent.config.kubernetes, NODE)
    d.index.replace("peerauthentications", [], "0")
    d.apply()

    def peer(mtls, rv):
        return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                "metadata": {"name": "web", "namespace": "shop", "resourceVersion": rv},
                "spec": {"selector": {"matchLabels": {"app": "web"}}, "mtls": mtls}}

    def put(obj):
        d.index.event("peerauthentications", "MODIFIED", obj)
        for _ in d.applier.steps(d.index, d.index.take()):
            pass
        d.applier.commit_policies()
        return mtls_mode(agent.policies, "shop", {"app": "web"}, 8080)

    assert put(peer({"mode": "DISABLE"}, "1")) == "PERMISSIVE"  # DISABLE: plaintext accepted
    assert put(peer({"mode": "DISABLED"}, "2")) == "STRICT"  # a typo: never more plaintext than written
    assert d.counts["policies_rejected"] == 1 and d.counts["policies_fail_closed"] == 1
    assert put(peer({"mode": "PERMISSIVE"}, "3")) == "PERMISSIVE"  # fixed: the object's own mode again
