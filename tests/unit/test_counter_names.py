"""Counter names carry no spaces, and the decision metric counts what the decision
events count (issue 21), at the points where both are made."""

from types import SimpleNamespace

import pytest

from agent.proxy import enforce
from agent.proxy.conns import Conn
from agent.proxy.finish import reason_token
from agent.rbac.loader import load_documents
from agent.rbac.store import PolicyStore
from agent.state.workloads import workload_from_json
from agent.telemetry.metrics import Metrics


@pytest.mark.parametrize("reason, token", [
    ("no ALLOW policy matched", "no_allow_policy_matched"),
    ("denied by DENY policy", "denied_by_deny_policy"),
    ("connect_failed: Connection refused", "connect_failed"),
    ("unknown_source", "unknown_source"),
    ("", "unknown"),
])
def test_reason_tokens(reason, token):
    assert reason_token(reason) == token


def test_decision_metric_and_events_agree():
    store = PolicyStore()
    store.apply(load_documents("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                               "metadata: {name: only-a, namespace: shop}\n"
                               "spec: {rules: [{from: [{source: {principals: [cluster.local/ns/a/sa/a]}}]}]}\n",
                               "p.yaml"), "p.yaml")
    counts: dict[str, int] = {}
    agent = SimpleNamespace(policies=store, telemetry=SimpleNamespace(metrics=Metrics()),
                            count=lambda name, n=1: counts.__setitem__(name, counts.get(name, 0) + n))
    web = workload_from_json({"uid": "w", "name": "web", "namespace": "shop", "ip": "198.19.0.2"})
    for principal in ("spiffe://cluster.local/ns/a/sa/a", "spiffe://cluster.local/ns/b/sa/b",
                      "spiffe://cluster.local/ns/a/sa/a"):
        conn = Conn("inbound", "tunnel", "198.19.1.2", 40000, "198.19.0.2", 8080, 0.0, 0.0, dst=web,
                    src_principal=principal, enforced_here=True)
        enforce.decide(agent, conn)
    series = agent.telemetry.metrics.counters["hostmesh_policy_decisions_total"]
    assert series == {("allow", "shop/only-a"): 2, ("deny", "-"): 1}
    assert (counts["policy_decisions_allow"], counts["policy_decisions_deny"]) == (2, 1)


def test_lab_otlp_receiver_writes_ids_in_hex_like_the_access_log():
    from agent.lab.otlp import hex_ids

    body = {"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "AAECAwQFBgcICQoLDA0ODw==", "spanId": "AAECAwQFBgc=", "parentSpanId": "", "name": "connect"}]}]}]}
    span = hex_ids(body)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span == {"traceId": "000102030405060708090a0b0c0d0e0f", "spanId": "0001020304050607", "parentSpanId": "",
                    "name": "connect"}
