"""The policy store's per-workload cache hits for real connections (agent.proxy.enforce):
the decision path hands the store the workload's own labels mapping, so one workload
costs one cache entry however many connections and requests it sees."""

from __future__ import annotations

import time

from agent.proxy import enforce
from agent.proxy.conns import Conn
from agent.rbac.loader import load_documents
from agent.rbac.store import PolicyStore
from agent.state.workloads import workload_from_json

POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-get, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{to: [{operation: {methods: [GET]}}]}]
"""


class FakeAgent:
    def __init__(self) -> None:
        self.policies = PolicyStore("istio-system")
        self.policies.apply(load_documents(POLICY, "p.yaml", "istio-system"), "p.yaml")
        self.counters: dict[str, int] = {}

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


def conn(dst) -> Conn:
    return Conn("inbound", "tunnel", "10.1.0.9", 40000, dst.ip, 8080, time.time(), time.monotonic(), dst=dst,
                src_principal="spiffe://cluster.local/ns/front/sa/client", enforced_here=True)


def test_every_decision_path_hits_one_cache_entry_per_workload(monkeypatch):
    agent = FakeAgent()
    web = workload_from_json({"uid": "u1", "name": "web", "namespace": "shop", "ip": "10.1.0.5",
                              "labels": {"app": "web"}, "http_ports": [8080]})
    computed = []
    real = agent.policies._applicable
    monkeypatch.setattr(agent.policies, "_applicable", lambda ns, labels: computed.append(ns) or real(ns, labels))
    for _ in range(50):
        c = conn(web)
        assert enforce.inspect_http(agent, c) is True
        assert enforce.strict_mtls(agent, c) is False
        assert enforce.decide(agent, c).verdict == "deny"  # L4 decision: the GET rule needs HTTP
    assert computed == ["shop"]  # computed once, then 149 hits
    assert len(agent.policies._by_obj) == 1
    assert agent.counters == {"policy_decisions_deny": 50}
    # another workload with equal labels is its own (small) entry, not a copy per call
    other = workload_from_json({"uid": "u2", "name": "web-2", "namespace": "shop", "ip": "10.1.0.6",
                                "labels": {"app": "web"}, "http_ports": [8080]})
    for _ in range(10):
        enforce.inspect_http(agent, conn(other))
    assert len(agent.policies._by_obj) == 2 and computed == ["shop", "shop"]
