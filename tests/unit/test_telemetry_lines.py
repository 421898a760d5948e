"""The access log's fast encodings (``RequestRecord.json_line``, the pipeline's flush)
write exactly the bytes the JSON encoder writes for the record's document, and the
request accounting moves exactly the series the four registry calls moved."""

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.telemetry import account
from agent.telemetry.istio import LabelContext, http_labels, service_ref
from agent.telemetry.metrics import Metrics
from agent.telemetry.record import ConnRecord, Endpoint, RequestRecord

CTX = LabelContext(local_node="node-0", localities={"node-0": ("eu", "eu-1")})
SRC = Endpoint("198.19.1.2", 40000, "client", "front", "spiffe://cluster.local/ns/front/sa/client",
               {"app": "client"}, "node-0")
DST = Endpoint("198.19.0.2", 8080, "web", "shop", "spiffe://cluster.local/ns/shop/sa/web", {"app": "web"}, "node-1")
ODD = Endpoint("10.0.0.9", 1, 'w"\\\n\x00é', None, None)  # escapes in the shared part; None fields
OUT = Endpoint("203.0.113.7", 65535)  # outside the mesh: only ip and port


def old_line(rec) -> str:
    """What the pipeline wrote before: json.dumps with these separators of to_json()."""
    return json.dumps(rec.to_json(), separators=(",", ":"))


def req(**kw) -> RequestRecord:
    base = dict(start=1795345876.25, end=1795345876.2513, node="node-0", src=SRC, dst=DST, method="GET",
                path="/api/items?q=1", host="web.shop", status=200, verdict="allow", policy=None,
                trace_id="ab" * 16, direction="inbound", mode="tunnel", request_bytes=120, response_bytes=340)
    base.update(kw)
    return RequestRecord(**base)


CASES = [
    req(),
    req(direction="outbound", src=SRC, dst=DST),  # same ends, the other reporter
    req(policy="shop/no-admin", verdict="deny", status=403, path="/admin", trace_id=None),
    req(path='/q?a="b"&c=\\d', host="h\"ost", method="PO\"ST"),
    req(path="/\x00\x01\x1f\x7f\t\r\n\b\f", host="\u2028\u2029"),
    req(path="/caf\u00e9/\u4e2d\u6587/\U0001f600", host="b\u00fccher.example", policy="ns/p\u00f6licy"),
    req(path="/lone-\ud800-surrogate"),
    req(src=ODD, dst=OUT, node='n"\u00e9', direction="outbound"),
    req(start=1795345876.0004995, end=1795345877.9995),  # rounding of ms and of the duration
    req(start=0.0, end=0.0, request_bytes=0, response_bytes=2**70),
    req(start=1, end=2),  # ints: the duration is an int, written without ".0"
    req(host=None, policy=None, trace_id=None),  # None where a string is usual
    req(status=True),  # a bool is not an int in JSON
    req(method=type("S", (str,), {})("GET")),  # a str subclass
    req(start=0.0, end=2e13),  # a huge duration: float repr with an exponent
    req(end=math.inf),
]


@pytest.mark.parametrize("rec", CASES, ids=range(len(CASES)))
def test_request_line_is_the_encoders_bytes(rec):
    if not math.isfinite(rec.end):
        with pytest.raises((ValueError, OverflowError)):
            old_line(rec)
        with pytest.raises((ValueError, OverflowError)):
            rec.json_line()
        return
    assert rec.json_line() == old_line(rec)
    assert rec.json_line() == old_line(rec)  # the second time from the per-connection part


def test_connection_line_is_the_encoders_bytes():
    c = ConnRecord(1.0, 2.5, "node-0", "outbound", "tunnel", SRC, ODD, 79, 1073, "allow", None, "closed", None,
                   response_flags="UF")
    assert c.json_line() == old_line(c)


text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=40)


@given(method=text, path=text, host=text, policy=st.none() | text, trace=st.none() | text,
       start=st.floats(0, 4e9), dur=st.floats(0, 1e6), status=st.integers(0, 999),
       sizes=st.tuples(st.integers(0, 2**63), st.integers(0, 2**63)), reporter=st.sampled_from(["inbound", "outbound"]))
def test_any_request_line_is_the_encoders_bytes(method, path, host, policy, trace, start, dur, status, sizes, reporter):
    r = req(method=method, path=path, host=host, policy=policy, trace_id=trace, start=start, end=start + dur,
            status=status, request_bytes=sizes[0], response_bytes=sizes[1], direction=reporter)
    assert r.json_line() == old_line(r)


def test_flush_writes_the_old_lines(tmp_path):
    import trio  # noqa: F401  (the pipeline module imports it)

    from agent.config import TelemetryConfig
    from agent.telemetry.pipeline import Telemetry

    log = tmp_path / "access.log"
    tel = Telemetry(TelemetryConfig(access_log=str(log)), "node-0", CTX)
    tel._log = tel._open_log()
    c = ConnRecord(1.0, 2.5, "node-0", "inbound", "tunnel", SRC, DST, 79, 1073, "allow", None, "closed", None)
    recs = [*CASES[:8], c]
    for r in recs:
        tel.submit(r)
    tel.flush()
    assert log.read_text() == "".join(old_line(r) + "\n" for r in recs)
    assert tel.counts["access_log"] == len(recs)


def account_as_before(m: Metrics, r) -> None:
    """What account.request did before count_request: four registry calls."""
    lb = http_labels(r, CTX)
    m.inc("istio_requests_total", lb)
    m.observe("istio_request_duration_milliseconds", lb, max(0.0, (r.end - r.start) * 1000.0))
    m.observe("istio_request_bytes", lb, r.request_bytes)
    m.observe("istio_response_bytes", lb, r.response_bytes)


def test_request_accounting_moves_what_the_four_calls_moved():
    svc = service_ref("web", "shop")
    recs = [req(service=svc), req(service=svc, status=503, flags="UC"), req(direction="outbound"),
            req(service=svc), req(src=Endpoint(SRC.ip, SRC.port, SRC.workload, SRC.namespace, SRC.principal, SRC.labels, SRC.node)),
            req(src=OUT, request_bytes=7, start=5.0, end=4.0)]
    fast, slow, other = Metrics(), Metrics(), Metrics()
    for r in recs * 3:
        account.request(fast, r, CTX)
        account.request(other, r, CTX)  # two registries, one label cache: each moves its own series
        account_as_before(slow, r)
    assert fast.snapshot() == slow.snapshot() == other.snapshot() and fast.render() == slow.render()


def test_request_accounting_past_the_series_bound_counts_every_overflow():
    fast, slow = Metrics(max_series=2), Metrics(max_series=2)
    recs = [req(status=s) for s in (200, 201, 202, 203)]
    for r in recs * 3:
        account.request(fast, r, CTX)
        account_as_before(slow, r)
    assert fast.snapshot() == slow.snapshot()
    assert fast.counters["hostmesh_metrics_series_overflow_total"][("istio_requests_total",)] == 6


def test_kafka_values_are_the_encoders_bytes():
    pytest.importorskip("aiokafka")
    from agent.config import KafkaConfig
    from agent.telemetry.kafka import KafkaSink

    sink = KafkaSink(KafkaConfig(bootstrap="127.0.0.1:9"), Metrics())
    c = ConnRecord(1.0, 2.5, "node-0", "outbound", "tunnel", SRC, ODD, 79, 1073, "allow", None, "closed", None)
    recs = [*CASES[:8], c]
    sink.offer(recs, [r.to_json() for r in recs])
    assert list(sink._buf) == [(r.key.encode(), old_line(r).encode()) for r in recs]
    assert sink.counts["produced"] == len(recs)


def test_a_batch_of_requests_moves_what_one_submit_each_moves():
    """``Telemetry.submit_requests`` (the core's exchanges, one call per batch) against
    ``submit`` of each: the same series, counts, queue and drops past a full queue."""
    from types import SimpleNamespace

    from agent.telemetry.pipeline import Telemetry

    def tel():
        cfg = SimpleNamespace(max_series=100, build_component="ztunnel", queue_size=4, batch_size=3)
        return Telemetry(cfg, "node-0", CTX)

    recs = [req(), req(status=503), req(direction="outbound"), req(end=1795345876.0), req(), req(status=404)]
    one, batch = tel(), tel()
    for r in recs:
        one.submit(r)
    batch.submit_requests(recs[:2])
    batch.submit_requests(recs[2:])
    assert batch.counts == one.counts == {"submitted": 6, "dropped_queue_full": 2, "access_log": 0}
    assert list(batch.queue) == list(one.queue) == recs[:4]
    for kind in ("counters", "hist"):
        assert dict(getattr(batch.metrics, kind)) == dict(getattr(one.metrics, kind))
    assert batch._wake.is_set() and one._wake.is_set()
