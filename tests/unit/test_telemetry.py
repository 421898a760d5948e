"""Telemetry records, batching and metrics (agent.telemetry), pure."""

import json

from hypothesis import given
from hypothesis import strategies as st

from agent.telemetry.batcher import Batcher
from agent.telemetry.istio import LabelContext, tcp_labels
from agent.telemetry.metrics import Metrics
from agent.telemetry.record import ConnRecord, Endpoint, RequestRecord

CTX = LabelContext(local_node="node-0")
SRC = Endpoint("198.19.1.2", 40000, "client", "front", "spiffe://cluster.local/ns/front/sa/client")
DST = Endpoint("198.19.0.2", 8080, "web", "shop", "spiffe://cluster.local/ns/shop/sa/web")


def rec(**kw):
    base = dict(start=1795345876.25, end=1795345876.5, node="node-0", direction="outbound", mode="tunnel",
                src=SRC, dst=DST, bytes_sent=79, bytes_received=1073, verdict="allow", policy=None, reason="closed",
                trace_id="ab" * 16)
    base.update(kw)
    return ConnRecord(**base)


def test_connection_record_has_exactly_the_spec_schema():
    doc = rec().to_json()
    assert list(doc) == ["type", "start", "end", "duration_ms", "node", "direction", "mode", "src", "dst",
                         "bytes_sent", "bytes_received", "verdict", "policy", "reason", "trace_id"]
    assert doc["type"] == "connection" and doc["start"].endswith("Z") and doc["duration_ms"] == 250.0
    assert set(doc["src"]) == {"ip", "port", "workload", "namespace", "principal"}
    assert json.loads(json.dumps(doc)) == doc
    assert rec().key == "front/client"
    assert rec(src=Endpoint("10.0.0.9", 1)).key == "10.0.0.9"


def test_request_record():
    r = RequestRecord(1.0, 1.5, "n", SRC, DST, "GET", "/admin", "web", 403, "deny", "shop/no-admin")
    doc = r.to_json()
    assert (doc["type"], doc["status"], doc["policy"], doc["direction"]) == ("request", 403, "shop/no-admin", "inbound")


def test_batcher_flushes_on_size_or_age_and_is_bounded():
    b = Batcher(batch_size=3, max_age_s=1.0, max_items=5)
    assert b.take(0.0) is None and b.next_deadline() is None
    b.add("a", 10.0)
    assert b.next_deadline() == 11.0 and b.take(10.5) is None
    assert b.take(11.0) == ["a"]
    for i in range(6):
        b.add(i, 20.0)
    assert b.dropped == 1 and len(b) == 5
    assert b.take(20.0) == [0, 1, 2] and b.take(20.0) is None  # two left, young
    assert b.take(21.0) == [3, 4]


@given(st.lists(st.tuples(st.integers(0, 3), st.floats(0, 0.5)), max_size=60))
def test_batcher_never_loses_or_reorders(ops):
    b = Batcher(batch_size=4, max_age_s=1.0, max_items=1000)
    now, added, taken = 0.0, [], []
    for i, (kind, dt) in enumerate(ops):
        now += dt
        if kind:
            b.add(i, now)
            added.append(i)
        else:
            taken += b.take(now) or []
    taken += b.take(now + 10) or []
    while len(b):
        taken += b.take(now + 10) or []
    assert taken == added


def test_metrics_render_counters_with_their_labels():
    m = Metrics()
    lb = tcp_labels(rec(), CTX)
    m.inc("istio_tcp_connections_opened_total", lb)
    text = m.render()
    assert "# TYPE istio_tcp_connections_opened_total counter" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("istio_tcp_connections_opened_total{"))
    assert line.startswith('istio_tcp_connections_opened_total{reporter="source",source_workload="client",'
                           'source_canonical_service="client",source_canonical_revision="latest",'
                           'source_workload_namespace="front",source_principal="spiffe://cluster.local/ns/front/sa/client"')
    assert 'connection_security_policy="mutual_tls"' in line and 'request_protocol="tcp"' in line
    assert line.endswith(" 1")


def test_metrics_cardinality_is_bounded_and_counted():
    m = Metrics(max_series=3)
    for i in range(10):
        m.inc("hostmesh_policy_decisions_total", ("allow", f"p{i}"))
    series = m.counters["hostmesh_policy_decisions_total"]
    assert len(series) == 4 and series[("other", "other")] == 7
    assert m.counters["hostmesh_metrics_series_overflow_total"][("hostmesh_policy_decisions_total",)] == 7


def test_histogram_cardinality_is_bounded_too():
    m = Metrics(max_series=2)
    for i in range(5):
        m.observe("istio_request_bytes", (str(i),), 10)
    assert len(m.hist["istio_request_bytes"]) == 3
    assert m.counters["hostmesh_metrics_series_overflow_total"][("istio_request_bytes",)] == 3


def test_sink_totals_reach_the_registry_once():
    from agent.telemetry.metrics import Metrics, count_exports

    m = Metrics()
    seen = count_exports(m, "kafka", (0, 0), 5, 1)
    seen = count_exports(m, "kafka", seen, 5, 1)  # nothing new: nothing counted twice
    seen = count_exports(m, "kafka", seen, 8, 1)
    assert seen == (8, 1)
    assert m.counters["hostmesh_telemetry_exported_total"] == {("kafka",): 8}
    assert m.counters["hostmesh_telemetry_export_failures_total"] == {("kafka",): 1}


def test_otlp_metrics_carry_counters_gauges_and_every_histogram():
    from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import encode_metrics
    from opentelemetry.sdk.resources import Resource

    from agent.telemetry.otlp import metrics_data

    m = Metrics()
    m.set_gauge("istio_build", ("ztunnel", "1.0"), 1)
    m.inc("istio_tcp_sent_bytes_total", tcp_labels(rec(), CTX), 1073)
    for name in ("istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"):
        m.observe(name, ("x",) * 28, 3.0)
        m.observe(name, ("x",) * 28, 5000.0)
    data = metrics_data(json.loads(json.dumps(m.snapshot())), Resource.create({}), 1, 2)
    metrics = {x.name: x for x in data.resource_metrics[0].scope_metrics[0].metrics}
    assert set(metrics) == {"istio_build", "istio_tcp_sent_bytes", "istio_request_duration_milliseconds",
                            "istio_request_bytes", "istio_response_bytes"}
    point = metrics["istio_request_bytes"].data.data_points[0]
    assert (point.count, point.sum, point.min, point.max) == (2, 5003.0, 3.0, 5000.0)
    assert sum(point.bucket_counts) == 2 and len(point.bucket_counts) == len(point.explicit_bounds) + 1
    assert point.bucket_counts[2] == 1 and point.bucket_counts[11] == 1  # le 5 and le 5000 (inclusive)
    assert metrics["istio_tcp_sent_bytes"].data.data_points[0].value == 1073
    assert encode_metrics(data).SerializeToString()
