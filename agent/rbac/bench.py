"""Policy engine micro-benchmark (`hostmesh bench`, scenario ``policy-10k``): load N
policies across M namespaces from YAML, then time decisions for random workloads; and
the worst delay of a decision on the trio thread while N policies are applied through
the agent's own path (agent.policy_sources: parsed, compiled and saved in a thread,
swapped in atomically)."""

from __future__ import annotations

import json
import random
import time

import yaml

from agent.rbac.evaluate import ConnAttrs, evaluate
from agent.rbac.loader import load_documents
from agent.rbac.store import PolicyStore


def make_policies(n: int, namespaces: int, seed: int = 1) -> str:
    rnd = random.Random(seed)
    docs = []
    for i in range(n):
        ns = f"ns{i % namespaces}"
        action = "DENY" if i % 5 == 0 else "ALLOW"
        docs.append(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            f"metadata: {{name: p{i}, namespace: {ns}}}\n"
            f"spec:\n  action: {action}\n  selector: {{matchLabels: {{app: app{i % 7}}}}}\n  rules:\n"
            f"  - from: [{{source: {{principals: ['cluster.local/ns/ns{rnd.randrange(namespaces)}/sa/sa{i % 13}']}}}}]\n"
            f"    to: [{{operation: {{ports: ['{8000 + i % 50}']}}}}]\n"
            f"    when: [{{key: source.ip, values: ['10.{i % 250}.0.0/16']}}]\n")
    return "---\n".join(docs)


def run_policy_bench(n_policies: int = 10000, n_namespaces: int = 1000, decisions: int = 20000) -> dict:
    text = make_policies(n_policies, n_namespaces)
    as_json = json.dumps([yaml.load(d, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) for d in text.split("---\n")])
    # JSON is what the Kubernetes API and scripted admin calls deliver; YAML is what people write
    t0 = time.perf_counter()
    store = PolicyStore()
    store.apply(load_documents(as_json, "bench.json"), "bench")
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    PolicyStore().apply(load_documents(text, "bench.yaml"), "bench")
    load_yaml_s = time.perf_counter() - t0
    rnd = random.Random(2)
    # destinations: the workloads of one node (a node hosts tens to hundreds of pods;
    # decisions are indexed per workload, so these are what a running agent evaluates)
    node_workloads = [(f"ns{rnd.randrange(n_namespaces)}", {"app": f"app{rnd.randrange(7)}"}) for _ in range(200)]
    conns = []
    for _ in range(decisions):
        ns, labels = rnd.choice(node_workloads)
        conns.append(ConnAttrs(f"10.{rnd.randrange(250)}.1.1", 40000,
                               f"cluster.local/ns/ns{rnd.randrange(n_namespaces)}/sa/sa1", "x", "10.0.0.1",
                               8000 + rnd.randrange(50), ns, labels))
    for ns, labels in node_workloads:  # the index is built as workloads arrive
        store.applicable(ns, labels)
    times = []
    for c in conns:
        t = time.perf_counter()
        evaluate(store, c)
        times.append(time.perf_counter() - t)
    times.sort()
    return {"load_s": load_s, "load_yaml_s": load_yaml_s, "decision_p50_us": times[len(times) // 2] * 1e6,
            "decision_p99_us": times[int(len(times) * 0.99)] * 1e6, "policies": n_policies}


def run_load_stall_bench(n_policies: int = 10000, n_namespaces: int = 1000, tick_s: float = 0.001) -> dict:
    """A decision every ``tick_s`` on the trio thread while ``n_policies`` are PUT the
    way the admin API does it; the delay of a decision is how late it finished against
    its schedule. Reported: the worst and p99 delay during the load, the same without a
    load (the scheduler's own noise), and how long the load took."""
    import tempfile
    from types import SimpleNamespace

    import trio

    from agent.policy_sources import PolicySources

    text = make_policies(n_policies, n_namespaces)
    conn = ConnAttrs("10.1.1.1", 40000, "cluster.local/ns/ns1/sa/sa1", "x", "10.0.0.1", 8001, "ns1", {"app": "app1"})

    async def decide_until(stop: trio.Event, store: PolicyStore, out: list[float]) -> None:
        while not stop.is_set():
            due = time.perf_counter() + tick_s
            await trio.sleep(tick_s)
            evaluate(store, conn)
            out.append(max(0.0, time.perf_counter() - due))

    async def main(state_dir: str) -> dict:
        store = PolicyStore()
        agent = SimpleNamespace(policies=store, count=lambda *_: None,
                                config=SimpleNamespace(state_dir=state_dir, policies=SimpleNamespace(root_namespace="istio-system")))
        sources = PolicySources(agent)
        idle: list[float] = []
        stop = trio.Event()
        async with trio.open_nursery() as n:
            n.start_soon(decide_until, stop, store, idle)
            await trio.sleep(0.5)
            stop.set()
        during: list[float] = []
        stop = trio.Event()
        t0 = time.perf_counter()
        async with trio.open_nursery() as n:
            n.start_soon(decide_until, stop, store, during)
            await sources.apply(text, "bench.yaml")
            load_s = time.perf_counter() - t0
            stop.set()
        assert len(store) == n_policies
        during.sort()
        idle.sort()
        return {"load_decision_delay_max_ms": during[-1] * 1e3,
                "load_decision_delay_p99_ms": during[int(len(during) * 0.99)] * 1e3,
                "idle_decision_delay_max_ms": idle[-1] * 1e3, "decisions_during_load": len(during),
                "load_via_api_s": load_s}

    with tempfile.TemporaryDirectory(prefix="hostmesh-bench-") as d:
        return trio.run(main, d)


if __name__ == "__main__":
    print(run_policy_bench())
    print(run_load_stall_bench())
