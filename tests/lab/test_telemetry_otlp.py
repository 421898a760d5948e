"""OTLP export to a real receiver (the real protocol, gRPC and HTTP): spans of both agents
join one trace, every record arrives as a log record, metrics carry Istio's series; an
unreachable endpoint or broker is a clear warning at start while traffic is served."""

import base64
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from agent.config import OtlpConfig
from agent.telemetry.metrics import Metrics
from agent.telemetry.otlp import OtlpSink
from agent.telemetry.record import ConnRecord, Endpoint
from tests.lab.conftest import hm, json_lines, lab_up, ns_run, wait_for


def received(path) -> list[dict]:
    p = Path(path)
    return [json.loads(ln) for ln in p.read_text().splitlines()] if p.exists() else []


def spans(lines) -> list[dict]:
    out = []
    for ln in lines:
        if ln["signal"] != "traces":
            continue
        for rs in ln["request"].get("resourceSpans", []):
            node = {a["key"]: a["value"].get("stringValue") for a in rs["resource"]["attributes"]}["host.name"]
            for ss in rs.get("scopeSpans", []):
                for s in ss.get("spans", []):
                    out.append({"node": node, "kind": s["kind"], "trace": _hex(s["traceId"]), "span": _hex(s["spanId"]),
                                "parent": _hex(s.get("parentSpanId", "")), "name": s["name"]})
    return out


def logs(lines) -> list[dict]:
    out = []
    for ln in lines:
        for rl in ln["request"].get("resourceLogs", []) if ln["signal"] == "logs" else []:
            for sl in rl.get("scopeLogs", []):
                for r in sl.get("logRecords", []):
                    body = {kv["key"]: kv["value"] for kv in r["body"]["kvlistValue"]["values"]}
                    out.append({"trace": _hex(r.get("traceId", "")), "direction": body["direction"]["stringValue"],
                                "type": body["type"]["stringValue"]})
    return out


def metric_names(lines) -> set[str]:
    return {m["name"] for ln in lines if ln["signal"] == "metrics"
            for rm in ln["request"].get("resourceMetrics", []) for sm in rm.get("scopeMetrics", [])
            for m in sm.get("metrics", [])}


def _hex(b64: str) -> str:
    if re.fullmatch(r"[0-9a-f]{16}|[0-9a-f]{32}", b64 or ""):  # the lab receiver writes OTLP/JSON hex
        return b64
    return base64.b64decode(b64).hex() if b64 else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def receiver(tmp_path):
    """The lab's receiver on loopback; ``start(fail_first)`` -> (grpc url, http url, out)."""
    procs = []

    def start(fail_first: int = 0):
        g, h, out = free_port(), free_port(), tmp_path / f"otlp{len(procs)}.jsonl"
        p = subprocess.Popen([sys.executable, "-m", "agent.lab.otlp", "--grpc-port", str(g), "--http-port", str(h),
                              "--out", str(out), "--fail-first", str(fail_first)])
        procs.append(p)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", g), 0.2).close()
                socket.create_connection(("127.0.0.1", h), 0.2).close()
                return f"http://127.0.0.1:{g}", f"http://127.0.0.1:{h}", out
            except OSError:
                time.sleep(0.05)
        raise AssertionError("receiver did not start")

    yield start
    for p in procs:
        p.kill()
        p.wait()


def pair(now: float) -> list[ConnRecord]:
    """The two records of one tunnelled connection: the source's and the destination's."""
    src = Endpoint("10.0.0.1", 40000, "a", "ns", "cluster.local/ns/ns/sa/a")
    dst = Endpoint("10.0.1.1", 80, "b", "ns", "cluster.local/ns/ns/sa/b")
    tid, sid = "ab" * 16, "cd" * 8
    return [ConnRecord(now - 1, now, "node-0", "outbound", "tunnel", src, dst, 10, 20, "allow", None, None, tid, sid),
            ConnRecord(now - 1, now, "node-1", "inbound", "tunnel", src, dst, 10, 20, "deny", "ns/p", "denied", tid,
                       None, sid)]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sink_sends_spans_logs_and_metrics(receiver, protocol):
    grpc_url, http_url, out = receiver()
    m = Metrics()
    m.inc("istio_tcp_sent_bytes_total", ("source",) * 9, 10)
    m.observe("istio_request_duration_milliseconds", ("x",) * 28, 3.0)
    sink = OtlpSink(OtlpConfig(endpoint=grpc_url if protocol == "grpc" else http_url, protocol=protocol,
                               export_interval_s=0.1), "node-0", m)
    sink.start()
    try:
        recs = pair(time.time())
        sink.offer(recs, [r.to_json() for r in recs])
        sink.tick()
        wait_for(lambda: sink.stats()["delivered"] == 2 and sink.stats()["metrics_exported"] >= 1)
        sink.tick()  # the pipeline's flush: the sink's totals reach the registry
        assert m.counters["hostmesh_telemetry_exported_total"] == {("otlp",): 2}
    finally:
        sink.stop()
    lines = received(out)
    assert {ln["transport"] for ln in lines} == {protocol}
    client, server = sorted(spans(lines), key=lambda s: s["kind"] != "SPAN_KIND_CLIENT")
    assert (client["kind"], server["kind"]) == ("SPAN_KIND_CLIENT", "SPAN_KIND_SERVER")
    # one trace: the source's span id is the one it sent; the destination's span is its child
    assert client["trace"] == server["trace"] == "ab" * 16
    assert client["span"] == server["parent"] == "cd" * 8 and server["span"] != client["span"]
    assert sorted(x["direction"] for x in logs(lines)) == ["inbound", "outbound"]
    assert {x["trace"] for x in logs(lines)} == {"ab" * 16}
    assert {"istio_tcp_sent_bytes", "istio_request_duration_milliseconds"} <= metric_names(lines)


def test_receiver_outage_retries_and_the_buffer_bound_is_exact(receiver):
    grpc_url, _, out = receiver(fail_first=2)
    sink = OtlpSink(OtlpConfig(endpoint=grpc_url, buffer_records=5, timeout_s=1), "node-0", Metrics())
    recs = pair(time.time()) * 4  # 8 records, 5 fit while the receiver fails
    sink.offer(recs, [r.to_json() for r in recs])
    sink.start()
    try:
        wait_for(lambda: sink.stats()["buffered"] == 0, timeout=30)
        s = sink.stats()
    finally:
        sink.stop()
    assert s["export_errors"] >= 1 and s["dropped_buffer_full"] == 3, s
    assert s["delivered"] + s["dropped_buffer_full"] + s["buffered"] == s["produced"] == 8, s
    assert len(logs(received(out))) == 5


def test_two_agents_spans_share_a_trace_in_the_lab():
    with lab_up("totl", "--nodes", "2", "--pods-per-node", "1", "--otlp") as lab:
        otlp = lab.status["otlp"]
        assert otlp["endpoint"] == "http://198.18.0.254:4317"
        lab.serve_http("pod-1-0", 8080)
        n = 5
        url = f"http://{lab.pod('pod-1-0')['ip']}:8080/"
        for _ in range(n):
            assert ns_run(lab.pod("pod-0-0")["netns"], "curl", "-s", "-o", "/dev/null", "-m", "5", url).returncode == 0

        def otlp_stats(i):
            return lab.admin(i, "GET", "/v1/stats")[1]["telemetry"]["otlp"]

        wait_for(lambda: all(otlp_stats(i)["delivered"] >= n for i in (0, 1)), timeout=30)
        # istio_build is exported from the start: wait for the traffic's series
        wait_for(lambda: len(spans(received(otlp["received"]))) >= 2 * n
                 and "istio_tcp_sent_bytes" in metric_names(received(otlp["received"])))
        lines = received(otlp["received"])
        sp = spans(lines)
        client = {s["trace"]: s for s in sp if s["node"] == "node-0" and s["kind"] == "SPAN_KIND_CLIENT"}
        server = {s["trace"]: s for s in sp if s["node"] == "node-1" and s["kind"] == "SPAN_KIND_SERVER"}
        assert len(client) == len(server) == n and client.keys() == server.keys()
        assert all(server[t]["parent"] == client[t]["span"] for t in client)
        lg = logs(lines)
        assert sum(x["direction"] == "outbound" for x in lg) == sum(x["direction"] == "inbound" for x in lg) == n
        assert {"istio_tcp_connections_opened", "istio_tcp_sent_bytes"} <= metric_names(lines)


def test_unreachable_endpoints_warn_at_start_and_traffic_is_served():
    with lab_up("tbad", "--nodes", "2", "--pods-per-node", "1") as lab:
        node0 = Path("/run/hostmesh/lab/tbad/node-0")
        assert hm("lab", "agent", "--name", "tbad", "node-0", "stop").returncode == 0
        cfg = yaml.safe_load((node0 / "config.yaml").read_text())
        # nothing listens on these (the lab's external address, no services started)
        cfg["telemetry"]["otlp"] = {"endpoint": "http://198.18.0.254:4317"}
        cfg["telemetry"]["kafka"] = {"bootstrap": "198.18.0.254:9092"}
        (node0 / "config.yaml").write_text(yaml.safe_dump(cfg))
        log_before = (node0 / "agent.log").stat().st_size
        assert hm("lab", "agent", "--name", "tbad", "node-0", "start").returncode == 0
        lab.serve_http("pod-1-0", 8080)
        url = f"http://{lab.pod('pod-1-0')['ip']}:8080/"
        for _ in range(3):
            assert ns_run(lab.pod("pod-0-0")["netns"], "curl", "-s", "-o", "/dev/null", "-m", "5", url).returncode == 0

        def warnings():
            with open(node0 / "agent.log", "rb") as f:
                f.seek(log_before)
                lines = json_lines(f.read().decode(errors="replace"))
            return [ln["msg"] for ln in lines if ln.get("level") == "warning"]

        wait_for(lambda: any("OTLP endpoint http://198.18.0.254:4317" in w for w in warnings())
                 and any("kafka broker 198.18.0.254:9092 unreachable" in w for w in warnings()), timeout=20)
        # the records wait for the sinks (bounded), counted; none was lost on the way
        wait_for(lambda: lab.admin(0, "GET", "/v1/stats")[1]["telemetry"]["otlp"]["buffered"] == 3)
        t = lab.admin(0, "GET", "/v1/stats")[1]["telemetry"]
        assert t["otlp"]["connected"] is False and t["kafka"]["connected"] is False, t
        assert t["kafka"]["buffered"] == 3 and t["kafka"]["produced"] == t["otlp"]["produced"] == 3, t
        with open(node0 / "agent.log") as f:
            assert not any('"logger": "aiokafka"' in ln or '"logger": "opentelemetry' in ln for ln in f), \
                "library retry noise reached the agent's log"
