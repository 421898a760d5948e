"""Policy sources of a real Agent: API-applied policies survive a restart (state_dir),
a rejected file at start leaves every valid one in force and the node not ready with
the reason, and loading happens beside the deciding thread with an atomic swap."""

import json

import pytest
import trio
import yaml

from agent.app import Agent
from agent.config import load_config
from agent.errors import ApiError
from agent.rbac.bench import make_policies
from agent.rbac.evaluate import ConnAttrs, evaluate
from agent.readiness import metrics_text, readiness

DENY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-evil, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [evil]}}]}]
"""


def agent_at(tmp_path, policy_dir=None) -> Agent:
    doc = {"node": {"name": "n0", "address": "192.0.2.1"}, "state_dir": str(tmp_path / "state")}
    if policy_dir:
        doc["policies"] = {"dir": str(policy_dir)}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    a = Agent(load_config(str(path)), str(path))
    a.ready = True  # as serve.run_agent sets it once everything listens
    return a


def evil(a: Agent) -> str:
    c = ConnAttrs("10.9.0.1", 4000, "cluster.local/ns/evil/sa/x", "evil", "10.0.0.2", 80, "shop", {})
    return evaluate(a.policies, c).verdict


def test_api_policies_survive_a_restart(tmp_path):
    a = agent_at(tmp_path)
    r = trio.run(a.apply_policies, DENY, "deny.yaml")
    assert r["applied"] == ["shop/deny-evil"] and evil(a) == "deny"
    saved = json.loads((tmp_path / "state" / "policies.json").read_text())
    assert list(saved["sources"]) == ["deny.yaml"] and saved["sources"]["deny.yaml"][0]["spec"]["action"] == "DENY"

    b = agent_at(tmp_path)  # the restarted agent, same state_dir
    assert evil(b) == "allow"
    trio.run(b.policy_sources.load_at_start)
    assert evil(b) == "deny" and b.is_ready()
    assert [(p["namespace"], p["name"], p["source"]) for p in b.list_policies()] == [("shop", "deny-evil", "deny.yaml")]

    # a delete through the API is saved too: the next restart does not bring it back
    trio.run(b.delete_policy, "shop", "deny-evil")
    c = agent_at(tmp_path)
    trio.run(c.policy_sources.load_at_start)
    assert evil(c) == "allow" and c.list_policies() == []


def test_a_bad_file_beside_a_valid_deny_keeps_the_deny_and_the_node_not_ready(tmp_path):
    d = tmp_path / "policies"
    d.mkdir()
    (d / "deny.yaml").write_text(DENY)
    (d / "bad.yaml").write_text(DENY.replace("namespaces", "namespacez"))
    a = agent_at(tmp_path, d)
    trio.run(a.policy_sources.load_at_start)
    assert evil(a) == "deny"
    st = a.status()
    assert st["ready"] is False
    assert st["problems"] == [{"source": str(d / "bad.yaml"),
                               "error": f"{d / 'bad.yaml'}:6: spec.rules[0].from[0].source.namespacez: unknown field"}]
    code, body = readiness(a, "/healthz/ready")
    assert code == 503 and body.decode().startswith(f"policy source rejected: {d / 'bad.yaml'}:")
    assert "hostmesh_ready 0" in metrics_text(a).decode()

    # fixing the file and reloading makes the node ready again; the DENY never left
    (d / "bad.yaml").write_text(DENY.replace("deny-evil", "deny-evil-2"))
    trio.run(a.reload)
    assert a.is_ready() and a.status()["problems"] == [] and len(a.list_policies()) == 2
    # a file removed from the directory takes its policies along at the next reload
    (d / "bad.yaml").unlink()
    trio.run(a.reload)
    assert [p["name"] for p in a.list_policies()] == ["deny-evil"]


def test_an_unreadable_state_file_is_a_reason_not_silence(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "policies.json").write_text("{not json")
    a = agent_at(tmp_path)
    trio.run(a.policy_sources.load_at_start)
    assert not a.is_ready() and "policies.json:1: unreadable" in a.not_ready_reason()


def test_an_invalid_body_changes_nothing(tmp_path):
    a = agent_at(tmp_path)
    trio.run(a.apply_policies, DENY, "deny.yaml")
    with pytest.raises(ApiError) as e:
        trio.run(a.apply_policies, DENY.replace("DENY", "NOPE"), "deny.yaml")
    assert e.value.status == 400 and evil(a) == "deny"


def test_decisions_go_on_while_10000_policies_load_and_see_one_set_or_the_other(tmp_path):
    """The load runs in a thread; the trio thread keeps deciding, and every decision
    sees either the whole old set or the whole new one (one generation, never a mix)."""
    a = agent_at(tmp_path)
    trio.run(a.apply_policies, DENY, "deny.yaml")
    big = make_policies(10_000, 1000)
    seen: list[tuple[int, str, bool]] = []

    async def main():
        done = trio.Event()

        async def load():
            await a.apply_policies(big, "big.yaml")
            done.set()

        async with trio.open_nursery() as n:
            n.start_soon(load)
            while not done.is_set():
                gen = a.policies.generation
                seen.append((gen, evil(a), done.is_set()))
                await trio.sleep(0)

    trio.run(main)
    during = [s for s in seen if not s[2]]
    assert len(during) > 10  # the deciding thread was never held for the whole load
    assert {v for _, v, _ in seen} == {"deny"}  # the DENY held throughout
    assert len({g for g, _, _ in during}) <= 2 and len(a.list_policies()) == 10_001


def test_loading_leaves_no_cyclic_garbage_for_the_paused_collector(tmp_path):
    """The collector is paused while a set is prepared and its objects promoted after it
    (agent.policy_sources): so neither a load nor a rejected one may leave policy
    objects in reference cycles (only a rare full collection would free them)."""
    import gc

    a = agent_at(tmp_path)
    good = make_policies(300, 30)
    kinds: set[str] = set()

    async def main():
        await a.apply_policies(good, "p.yaml")
        gc.unfreeze()  # what earlier tests left frozen is not this test's
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            with pytest.raises(ApiError):
                await a.apply_policies(good.replace("DENY", "NOPE", 1), "p.yaml")
            await a.apply_policies(good, "p.yaml")  # the worker thread drops the failed job
            gc.unfreeze()
            gc.collect()
            # only the policy engine's own types: a threading.Condition another test's
            # thread left in a cycle is not this test's (it shares a class name)
            kinds.update(type(o).__name__ for o in gc.garbage
                         if type(o).__module__.startswith(("agent.rbac", "agent.yamlpos", "agent.policy")))
        finally:
            gc.set_debug(0)
            gc.garbage.clear()

    trio.run(main)
    assert not kinds & {"AuthorizationPolicy", "Rule", "Source", "Condition", "Doc", "PolicySet"}, kinds
