"""Policy engine micro-benchmark (`hostmesh bench`, scenario ``policy-10k``): load N
policies across M namespaces from YAML, then time decisions for random workloads."""

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


if __name__ == "__main__":
    print(run_policy_bench())
