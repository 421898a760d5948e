"""Supervisor -> worker state pushes (agent.workers): a fresh worker gets the whole
state, a running one only what changed since the state it holds (workloads changed or
gone; policies and peers only when they changed), and applying the deltas
(Agent.sync_state) leaves the worker exactly where the whole state would."""

from __future__ import annotations

from agent.app import Agent
from agent.config import Config, PeerNode
from agent.workers import Supervisor

POLICY = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
          "metadata": {"name": "deny", "namespace": "shop"}, "spec": {"action": "DENY", "rules": [{}]}}


def cfg(tmp_path, name) -> Config:
    return Config.model_validate({"node": {"name": "n1", "address": "192.0.2.1"}, "state_dir": str(tmp_path / name),
                                  "dataplane": {"workers": 2, "engine": "epoll"}})


def wl(uid, ip, app="web"):
    from agent.state.workloads import workload_from_json

    return workload_from_json({"uid": uid, "name": uid, "namespace": "shop", "ip": ip, "labels": {"app": app}})


def snapshot(a: Agent) -> tuple:
    return ({w.uid: w for w in a.registry}, a.policies.list(), [n.name for n in a.config.cluster.nodes])


async def test_deltas_carry_only_the_change_and_converge_like_the_whole_state(tmp_path):
    sup = Supervisor(cfg(tmp_path, "s"))
    for i in range(50):
        sup.register(wl(f"u{i}", f"10.1.0.{i + 1}"))
    worker = Agent(cfg(tmp_path, "w"))
    full = sup.state_since(None)
    assert "delta" not in full and len(full["workloads"]) == 50
    await worker.sync_state(full)
    held = sup._state_key()

    sup.register(wl("u7", "10.1.0.8", app="web-v2"))  # changed
    sup.unregister("u9")  # gone
    sup.register(wl("new", "10.1.1.1"))  # added
    delta = sup.state_since(held)
    assert delta["delta"] is True and sorted(w["uid"] for w in delta["workloads"]) == ["new", "u7"]
    assert delta["removed"] == ["u9"] and "policies" not in delta and "cluster" not in delta
    assert (await worker.sync_state(delta))["registered"] == 2
    assert snapshot(worker) == snapshot(sup)

    held = sup._state_key()
    await sup.apply_policies(str(POLICY).replace("'", '"'), "admin-api")
    sup.config.cluster.nodes = [PeerNode(name="n2", address="192.0.2.2", pod_cidrs=["10.2.0.0/24"])]
    sup.cluster_changed()
    delta = sup.state_since(held)
    assert delta["workloads"] == [] and set(delta["policies"]) == {"admin-api"} and delta["cluster"]["nodes"]
    await worker.sync_state(delta)
    assert snapshot(worker) == snapshot(sup) and [p.name for p in worker.view.peers] == ["n2"]
    assert sup.state_since(sup._state_key()) == {"delta": True, "workloads": [], "removed": []}


def test_a_worker_older_than_the_log_gets_the_whole_state(tmp_path):
    sup = Supervisor(cfg(tmp_path, "s"))
    sup.register(wl("a", "10.1.0.1"))
    held = sup._state_key()
    for i in range(3000):  # churn: uids come and go, the log forgets the oldest
        sup.register(wl(f"t{i}", "10.1.9.9"))
        sup.unregister(f"t{i}")
    assert sup._log_floor > held[0] and "delta" not in sup.state_since(held)
