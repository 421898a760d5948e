"""A watched AuthorizationPolicy the loader refuses is enforced fail closed by a stand-in
read from the object (agent.rbac.loader.stand_in, docs/kubernetes.md): a typo never lets
through what the operator's policy was written to stop, and the stand-in depends on the
object only, so a restart (a fresh list) enforces the same."""
import math

import pytest

from agent.rbac.evaluate import ConnAttrs, evaluate
from agent.rbac.loader import PolicyError, load_object, stand_in
from agent.rbac.store import PolicyStore
from tests.unit.k8s_objects import authz

ALICE = "cluster.local/ns/shop/sa/alice"


def _broken(**spec):
    obj = authz("p", **spec)
    with pytest.raises(PolicyError):
        load_object(obj, "kubernetes:p", "istio-system")
    return obj


@pytest.mark.parametrize("spec, want", [
    ({"action": "DENY", "rulez": []}, ("DENY", (("app", "web"),), 1)),
    ({"action": "deny", "rules": [{}]}, ("DENY", (("app", "web"),), 1)),          # action unreadable
    ({"action": "CUSTOM", "provider": {"name": "x"}, "rules": [{}]}, ("DENY", (("app", "web"),), 1)),
    ({"action": "ALLOW", "rules": [{"from": [{"source": {"principalz": ["x"]}}]}]}, ("ALLOW", (("app", "web"),), 0)),
    ({"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}, ("ALLOW", (("app", "web"),), 0)),  # ALLOW default
])
def test_the_stand_in_keeps_the_action_s_side_and_the_selector(spec, want):
    got = stand_in(_broken(selector={"matchLabels": {"app": "web"}}, **spec), "kubernetes:p", "istio-system")
    assert [(p.action, p.selector, len(p.rules), p.namespace, p.name) for p in got] == [(*want, "shop", "p")]


def test_an_unreadable_selector_widens_to_the_namespace_and_audit_holds_nothing():
    wide = stand_in(_broken(selector={"matchLabels": {"app": 7}}, action="DENY", rules=[{}]), "k", "istio-system")
    assert [(p.action, p.selector) for p in wide] == [("DENY", None)]
    assert stand_in(_broken(action="AUDIT", rulez=[]), "k", "istio-system") == []
    assert stand_in("junk", "k", "istio-system") == []


def test_dry_run_stays_dry_run():
    obj = _broken(action="DENY", rulez=[])
    obj["metadata"]["annotations"] = {"istio.io/dry-run": "true"}
    assert [p.dry_run for p in stand_in(obj, "k", "istio-system")] == [True]


def _decide(docs, labels):
    store = PolicyStore()
    store.replace_source("kubernetes", docs)
    return evaluate(store, ConnAttrs("10.0.0.1", 4000, ALICE, "shop", "10.1.0.5", 8080, "shop", labels)).verdict == "allow"


@pytest.mark.parametrize("broken, web, other", [
    ({"action": "DENY", "rulez": []}, False, True),                  # the deny still denies
    ({"action": "ALLOW", "rules": [{"from": [{"source": {"principalz": ["x"]}}]}]}, False, True),  # allows nothing
])
def test_what_the_stand_in_decides(broken, web, other):
    docs = stand_in(_broken(selector={"matchLabels": {"app": "web"}}, **broken), "k", "istio-system")
    assert _decide(docs, {"app": "web"}) is web
    assert _decide(docs, {"app": "db"}) is other  # outside its selector: as without it


def _watched(spec: dict, name: str = "p") -> dict:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "ns"}, "spec": spec}


@pytest.mark.parametrize("labels", [{"app": "web*"}, {"": "web"}, {"a*": "b"}])
def test_a_deny_whose_selector_is_refused_denies_its_whole_namespace(labels):
    doc = _watched({"action": "DENY", "selector": {"matchLabels": labels}, "rules": [{}]})
    with pytest.raises(PolicyError):
        load_object(doc, "p")
    # before: the stand-in kept the refused selector, was refused itself, and nothing was enforced
    [held] = stand_in(doc, "p")
    assert (held.namespace, held.action, held.selector, len(held.rules)) == ("ns", "DENY", None, 1)


def test_an_allow_whose_selector_is_refused_allows_nothing_in_its_namespace():
    [held] = stand_in(_watched({"selector": {"matchLabels": {"app": "*"}}, "rules": [{}]}), "p")
    assert (held.action, held.selector, held.rules) == ("ALLOW", None, ())


@pytest.mark.parametrize("spec", [
    {"action": "DENY", "rules": [{"to": [{"operation": {"ports": "80"}}]}]},
    {"action": "DENY", "rules": [{"when": [{"key": "source.ip", "values": [{"a": [1]}]}]}], "x": {1: 2}},
    {"action": "DENY", "rules": [{"from": [{"source": {"principals": [b"\xff"]}}]}]},
    {"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["9" * 5000]}}]}]},
    {"action": "DENY", "rules": [{"to": [{"operation": {"ports": [math.nan, math.inf]}}]}]},
    {"action": "DENY", "rules": [{"to": [{"operation": {"ports": [2**70]}}]}]},
    {"action": "DENY", "rules": [{"when": [{"key": "destination.port", "values": ["\u00b2"]}]}]},
    {"action": "DENY", "selector": {"matchLabels": {"app": "web"}}, "rules": [{"from": [{"source": None}]}]},
    {"action": ["DENY"], "rules": [{}]}, {"action": {"x": 1}}, {"action": "deny", "rules": [{}]},
])
def test_a_refused_watched_policy_is_a_policy_error_and_is_held_closed(spec):
    doc = _watched(spec)
    with pytest.raises(PolicyError):  # a ValueError, the one the watch's apply catches
        load_object(doc, "p")
    [held] = stand_in(doc, "p")
    assert held.action == "DENY" and len(held.rules) == 1 and held.rules[0].sources == ()
    assert held.selector == ((("app", "web"),) if "selector" in spec else None)


def _peer(name, ns="shop", **spec):
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"}, "spec": spec}


@pytest.mark.parametrize("spec, selector", [
    ({"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "PERMISIVE"}}, (("app", "web"),)),  # a typo'd mode
    ({"selector": {"matchLabels": {"app": "web"}}, "mtlz": {"mode": "DISABLE"}}, (("app", "web"),)),
    ({"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "PERMISSIVE"},
      "portLevelMtls": {"http": {"mode": "DISABLE"}}}, (("app", "web"),)),                           # a port by name
    ({"selector": {"matchLabels": {"app": 7}}, "mtls": {"mode": "DISABLE"}}, None),                  # unreadable selector
    ({"selector": {"matchLabels": {"app": "web*"}}, "mtls": {"mode": "DISABLE"}}, None),             # refused selector
])
def test_an_invalid_peer_authentication_is_held_as_strict_mtls(spec, selector):
    obj = _peer("relaxed", **spec)
    with pytest.raises(PolicyError):
        load_object(obj, "kubernetes:p", "istio-system")
    got = stand_in(obj, "kubernetes:p", "istio-system")
    assert [(p.kind, p.namespace, p.name, p.mode, p.selector, p.port_modes) for p in got] == [
        ("PeerAuthentication", "shop", "relaxed", "STRICT", selector, ())]


def test_a_held_peer_authentication_refuses_plaintext_where_the_namespace_allowed_it():
    from agent.rbac.evaluate import mtls_mode

    store = PolicyStore()
    ns_wide = load_object(_peer("ns", mtls={"mode": "PERMISSIVE"}), "k", "istio-system")
    held = stand_in(_peer("web", selector={"matchLabels": {"app": "web"}}, mtls={"mode": "DISABEL"}), "k", "istio-system")
    store.replace_source("kubernetes", ns_wide + held)
    assert mtls_mode(store, "shop", {"app": "web"}, 8080) == "STRICT"
    assert mtls_mode(store, "shop", {"app": "db"}, 8080) == "PERMISSIVE"  # the others keep the namespace's
