"""Traffic planner micro-benchmark (beside ``agent.rbac.bench``; rows of ``hostmesh bench``'s
``policy-10k`` scenario): 1,000 endpoints and 100 rules (DestinationRules with subsets,
outlier detection and locality; VirtualServices with weighted routes), then the time of
one routing decision (``plan_outbound`` for a service VIP) for random clients."""

from __future__ import annotations

import json
import random
import time

from agent.config import Config
from agent.proxy.plan import EndpointHealth, build_view, plan_outbound
from agent.state.workloads import Registry, workload_from_json
from agent.traffic.loader import load_traffic
from agent.traffic.store import TrafficStore


def _setup(services: int, per_service: int, rules: int):
    reg = Registry()
    reg.register(workload_from_json({"uid": "client", "name": "client", "namespace": "front", "ip": "10.0.0.2"},
                                    local_node="node-0"))
    svcs = []
    for s in range(services):
        eps = []
        for e in range(per_service):
            ip = f"10.{1 + s // 200}.{s % 200}.{1 + e % 250}" if per_service <= 250 else \
                f"10.{1 + e // 250}.{s}.{1 + e % 250}"
            node = f"node-{e % 4}"
            reg.register(workload_from_json({"uid": f"s{s}e{e}", "name": f"s{s}e{e}", "namespace": "shop", "ip": ip,
                                             "labels": {"version": f"v{e % 2 + 1}"},
                                             "node": None if node == "node-0" else node}, local_node="node-0"))
            eps.append(ip)
        svcs.append({"name": f"svc{s}", "namespace": "shop", "vip": f"10.96.{s // 250}.{s % 250 + 1}",
                     "ports": [80], "target_port": 8080, "endpoints": eps})
    zones = [{"topology.kubernetes.io/region": "r1", "topology.kubernetes.io/zone": f"z{i % 2}"} for i in range(4)]
    cfg = Config.from_obj({
        "node": {"name": "node-0", "address": "192.0.2.1", "labels": zones[0]},
        "cluster": {"services": svcs, "nodes": [{"name": f"node-{i}", "address": f"192.0.2.{i + 1}",
                                                 "labels": zones[i]} for i in range(4)]}})
    docs = []
    for i in range(rules // 2):
        host = f"svc{i % services}"
        docs.append({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                     "metadata": {"name": f"dr{i}", "namespace": "shop"},
                     "spec": {"host": host, "trafficPolicy": {
                         "loadBalancer": {"simple": "LEAST_REQUEST", "localityLbSetting": {"enabled": True}},
                         "connectionPool": {"tcp": {"maxConnections": 10000}},
                         "outlierDetection": {"consecutive5xxErrors": 5, "maxEjectionPercent": 50}},
                         "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                     {"name": "v2", "labels": {"version": "v2"}}]}})
        docs.append({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                     "metadata": {"name": f"vs{i}", "namespace": "shop"},
                     "spec": {"hosts": [host], "tcp": [{"route": [
                         {"destination": {"host": host, "subset": "v1"}, "weight": 90},
                         {"destination": {"host": host, "subset": "v2"}, "weight": 10}]}]}})
    store = TrafficStore()
    t0 = time.perf_counter()
    store.apply(load_traffic(json.dumps(docs), "bench.json"), "bench")
    load_s = time.perf_counter() - t0
    return build_view(cfg, reg, store), [s["vip"] for s in svcs[: max(1, rules // 2)]], load_s


def run_traffic_bench(services: int = 100, per_service: int = 10, rules: int = 100, decisions: int = 20000) -> dict:
    view, vips, load_s = _setup(services, per_service, rules)
    health = EndpointHealth()
    rnd = random.Random(3)
    targets = [rnd.choice(vips) for _ in range(decisions)]
    for vip in vips:  # clusters are made on first use
        plan_outbound("10.0.0.2", vip, 80, view, health, 0.0)
    times = []
    for i, vip in enumerate(targets):
        t = time.perf_counter()
        plan_outbound("10.0.0.2", vip, 80, view, health, i * 0.001)
        times.append(time.perf_counter() - t)
    times.sort()
    return {"endpoints": services * per_service, "rules": rules, "load_s": load_s,
            "decision_p50_us": times[len(times) // 2] * 1e6, "decision_p99_us": times[int(len(times) * 0.99)] * 1e6}


if __name__ == "__main__":
    print("100 services x 10 endpoints:", run_traffic_bench())
    print("1 service x 1,000 endpoints:", run_traffic_bench(services=1, per_service=1000))
