"""The OTLP sink — the one module that imports the OpenTelemetry SDK and exporters.

What it sends (SPEC.md, docs/telemetry.md):

- **logs**: one log record per finished connection or HTTP request, the JSON record as
  its body, the key fields as attributes, and the record's trace and span ids;
- **spans**: one per tunnelled connection — the source agent's CLIENT span has the span
  id it sent as the traceparent's parent id, the destination agent's SERVER span is its
  child, so both agents' spans join one trace;
- **metrics**: the agent's Prometheus series (Istio's names and labels) as cumulative
  sums and a histogram, every ``export_interval_s``.

Like the Kafka sink it never blocks traffic: ``offer`` (trio thread) appends to a
buffer bounded by records and counts what does not fit; an exporter thread sends
windows from the head of the buffer with the official OTLP exporters (gRPC or HTTP)
and removes a window only once the receiver accepted it, backing off while it does
not. So ``delivered + dropped + buffered == produced`` holds exactly.
"""

from __future__ import annotations

import collections
import logging
import random
import socket
import threading
import time
from urllib.parse import urlsplit

from opentelemetry import trace as trace_api
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from agent.telemetry.istio import BUCKETS, HTTP_LABELS
from agent.telemetry.metrics import COUNTERS, GAUGES, HISTOGRAMS, count_exports

logger = logging.getLogger("hostmesh.otlp")

SEND_WINDOW = 512
BACKOFF_FIRST_S = 0.2
BACKOFF_CAP_S = 10.0
SCOPE = InstrumentationScope("hostmesh")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("hostmesh")
    except Exception:  # noqa: BLE001 - a version string is not worth failing for
        return "dev"


def resource_for(node: str) -> Resource:
    return Resource.create({"service.name": "hostmesh", "service.namespace": "hostmesh",
                            "service.instance.id": node, "host.name": node, "service.version": _version()})


# ---- records -> OpenTelemetry data (pure apart from the SDK's objects) -------------------


class _Ids(IdGenerator):
    """Lets the sink choose the ids of the next span: the trace id is the connection's,
    and the source's span id is the one it already sent in the traceparent."""

    def __init__(self) -> None:
        self.trace_id: int | None = None
        self.span_id: int | None = None

    def generate_trace_id(self) -> int:
        return self.trace_id or random.getrandbits(128)

    def generate_span_id(self) -> int:
        return self.span_id or random.getrandbits(64)


class _Collect(SpanProcessor, LogRecordProcessor):
    """A processor that only hands finished spans and emitted log records back to the
    sink (the export itself is the sink's, with its own accounting)."""

    def __init__(self) -> None:
        self.spans: list = []
        self.logs: list = []

    def on_start(self, span, parent_context=None) -> None:
        pass

    def on_end(self, span) -> None:
        self.spans.append(span)

    def on_emit(self, log_record) -> None:
        self.logs.append(log_record)

    emit = on_emit  # older SDKs call it emit

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _ns(t: float) -> int:
    return int(t * 1e9)


def _attrs(doc: dict) -> dict:
    out = {"hostmesh.type": doc.get("type", "connection"), "hostmesh.node": doc.get("node") or "",
           "hostmesh.direction": doc.get("direction") or "", "hostmesh.verdict": doc.get("verdict") or ""}
    for side in ("src", "dst"):
        e = doc.get(side) or {}
        out[f"{side}.ip"] = e.get("ip") or ""
        out[f"{side}.port"] = int(e.get("port") or 0)
        for k in ("workload", "namespace", "principal"):
            if e.get(k):
                out[f"{side}.{k}"] = e[k]
    for k in ("mode", "policy", "reason", "method", "path", "host", "status", "bytes_sent", "bytes_received"):
        if doc.get(k) not in (None, ""):
            out[f"hostmesh.{k}"] = doc[k]
    return out


class Converter:
    """Builds spans and log records with the SDK's own providers, so the exporters get
    exactly what they expect; one instance per exporter thread."""

    def __init__(self, node: str) -> None:
        self.resource = resource_for(node)
        self.ids = _Ids()
        self.sink = _Collect()
        tp = TracerProvider(resource=self.resource, id_generator=self.ids)
        tp.add_span_processor(self.sink)
        self.tracer = tp.get_tracer("hostmesh")
        lp = LoggerProvider(resource=self.resource)
        lp.add_log_record_processor(self.sink)
        self.logger = lp.get_logger("hostmesh")

    def span(self, rec, doc: dict) -> None:
        """One span for a tunnelled connection (records without a trace id have none)."""
        trace_id = getattr(rec, "trace_id", None)
        if not trace_id or doc.get("type") != "connection" or doc.get("mode") != "tunnel":
            return
        outbound = doc.get("direction") == "outbound"
        ctx = None
        parent = getattr(rec, "parent_span_id", None)
        if not outbound and parent:
            ctx = trace_api.set_span_in_context(NonRecordingSpan(SpanContext(
                int(trace_id, 16), int(parent, 16), is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))))
        own = getattr(rec, "span_id", None) if outbound else None
        self.ids.trace_id, self.ids.span_id = int(trace_id, 16), int(own, 16) if own else None
        try:
            dst = doc.get("dst") or {}
            name = f"{'connect' if outbound else 'accept'} {dst.get('namespace') or '-'}/{dst.get('workload') or dst.get('ip')}"
            s = self.tracer.start_span(name, context=ctx, kind=SpanKind.CLIENT if outbound else SpanKind.SERVER,
                                       attributes=_attrs(doc), start_time=_ns(rec.start))
            if doc.get("verdict") == "deny":
                s.set_status(Status(StatusCode.ERROR, doc.get("reason") or "denied"))
            s.end(end_time=_ns(rec.end))
        finally:
            self.ids.trace_id = self.ids.span_id = None

    def log(self, rec, doc: dict) -> None:
        ctx = None
        trace_id = getattr(rec, "trace_id", None)
        span = getattr(rec, "span_id", None) or getattr(rec, "parent_span_id", None)
        if trace_id and span:
            ctx = trace_api.set_span_in_context(NonRecordingSpan(SpanContext(
                int(trace_id, 16), int(span, 16), is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))))
        deny = doc.get("verdict") == "deny"
        self.logger.emit(timestamp=_ns(rec.end), observed_timestamp=time.time_ns(), context=ctx,
                         severity_number=SeverityNumber.WARN if deny else SeverityNumber.INFO,
                         severity_text="WARN" if deny else "INFO", body=doc, attributes=_attrs(doc),
                         event_name=f"hostmesh.{doc.get('type', 'connection')}")

    def take(self) -> tuple[list, list]:
        spans, logs = self.sink.spans, self.sink.logs
        self.sink.spans, self.sink.logs = [], []
        return spans, logs


def metrics_data(snapshot: dict, resource: Resource, start_ns: int, now_ns: int) -> MetricsData:
    """A ``Metrics.snapshot()`` as OTLP cumulative sums (counters), gauges and histograms."""
    out = []
    for name, rows in sorted(snapshot.get("counters", {}).items()):
        help_, names = COUNTERS.get(name, ("", ()))
        points = [NumberDataPoint(attributes=_labels(names, lb), start_time_unix_nano=start_ns, time_unix_nano=now_ns,
                                  value=v) for lb, v in rows]
        out.append(Metric(name=name.removesuffix("_total"), description=help_, unit="By" if "bytes" in name else "1",
                          data=Sum(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE,
                                   is_monotonic=True)))
    for name, rows in sorted(snapshot.get("gauges", {}).items()):
        help_, names = GAUGES.get(name, ("", ("name",)))
        points = [NumberDataPoint(attributes=_labels(names, lb), start_time_unix_nano=start_ns, time_unix_nano=now_ns,
                                  value=v) for lb, v in rows]
        out.append(Metric(name=name, description=help_, unit="1", data=Gauge(data_points=points)))
    nb = len(BUCKETS) + 1
    for name, rows in sorted(snapshot.get("hist", {}).items()):
        help_, names, unit = HISTOGRAMS.get(name, ("", HTTP_LABELS, ""))
        points = [HistogramDataPoint(attributes=_labels(names, lb), start_time_unix_nano=start_ns,
                                     time_unix_nano=now_ns, count=int(h[nb + 1]), sum=h[nb],
                                     bucket_counts=[int(c) for c in h[:nb]],
                                     explicit_bounds=[float(b) for b in BUCKETS], min=h[nb + 2], max=h[nb + 3])
                  for lb, h in rows]
        out.append(Metric(name=name, description=help_, unit=unit,
                          data=Histogram(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE)))
    return MetricsData(resource_metrics=[ResourceMetrics(
        resource=resource, scope_metrics=[ScopeMetrics(scope=SCOPE, metrics=out, schema_url="")], schema_url="")])


def _labels(names, values) -> dict:
    return {n: str(v) for n, v in zip(names, values)}


# ---- exporters ------------------------------------------------------------------------


def exporters(config):
    """(spans, logs, metrics) exporters of the configured protocol."""
    timeout = config.timeout_s
    headers = dict(config.headers) or None
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        kw = dict(endpoint=config.endpoint, insecure=config.insecure, headers=headers, timeout=timeout)
        return OTLPSpanExporter(**kw), OTLPLogExporter(**kw), OTLPMetricExporter(**kw)
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    base = config.endpoint.rstrip("/")
    return (OTLPSpanExporter(endpoint=f"{base}/v1/traces", headers=headers, timeout=timeout),
            OTLPLogExporter(endpoint=f"{base}/v1/logs", headers=headers, timeout=timeout),
            OTLPMetricExporter(endpoint=f"{base}/v1/metrics", headers=headers, timeout=timeout))


def host_port(endpoint: str, protocol: str) -> tuple[str, int]:
    u = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    return u.hostname or "localhost", u.port or (4317 if protocol == "grpc" else 4318)


class OtlpSink:
    name = "otlp"

    def __init__(self, config, node: str, metrics) -> None:
        self.config = config
        self.node = node
        self.metrics = metrics
        self._buf: collections.deque = collections.deque()  # (record, doc)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._snapshot: dict | None = None
        self._last_snapshot = 0.0
        self._start_ns = time.time_ns()
        self._seen = (0, 0)  # delivered, export errors already counted in the registry
        self.counts = {"produced": 0, "delivered": 0, "dropped_buffer_full": 0, "export_errors": 0,
                       "spans_exported": 0, "logs_exported": 0, "metrics_exported": 0, "connected": False}

    # ---- trio thread -------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="hostmesh-otlp", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.config.timeout_s + 1)

    def offer(self, batch, docs) -> None:
        limit = self.config.buffer_records
        with self._lock:
            for rec, doc in zip(batch, docs):
                self.counts["produced"] += 1
                if len(self._buf) >= limit:
                    self.counts["dropped_buffer_full"] += 1
                    self.metrics.inc("hostmesh_telemetry_dropped_total", ("otlp", "buffer_full"))
                    continue
                self._buf.append((rec, doc))
        self._wake.set()

    def tick(self) -> None:
        """Called by the pipeline every flush, in the trio thread that owns the metrics
        registry: brings the export counters into it and hands over a snapshot when due."""
        with self._lock:
            delivered, errors = self.counts["delivered"], self.counts["export_errors"]
        self._seen = count_exports(self.metrics, "otlp", self._seen, delivered, errors)
        now = time.monotonic()
        if now - self._last_snapshot >= self.config.export_interval_s:
            self._last_snapshot = now
            snap = self.metrics.snapshot()
            with self._lock:
                self._snapshot = snap
            self._wake.set()

    def stats(self) -> dict:
        with self._lock:
            return dict(self.counts, buffered=len(self._buf))

    # ---- the exporter thread -------------------------------------------------------------
    def _main(self) -> None:
        self._probe()
        spans, logs, metrics = exporters(self.config)
        conv = Converter(self.node)
        backoff, warned = BACKOFF_FIRST_S, False
        try:
            while not self._stop.is_set() or self._buf:
                self._wake.wait(timeout=0.2)
                self._wake.clear()
                results = [self._export_metrics(metrics, conv)]
                if results[0] is not False:
                    results.append(self._export_window(spans, logs, conv))
                if results == [None, None]:
                    continue  # nothing was due
                if False not in results:
                    backoff = BACKOFF_FIRST_S
                    self.counts["connected"] = True
                    continue
                with self._lock:
                    self.counts["connected"] = False
                    self.counts["export_errors"] += 1
                if not warned:
                    logger.warning("OTLP endpoint %s is not accepting exports; telemetry is buffered and retried",
                                   self.config.endpoint)
                    warned = True
                if self._stop.wait(backoff):
                    break  # stopping: what is still buffered is counted as buffered
                backoff = min(BACKOFF_CAP_S, backoff * 2)
        finally:
            for e in (spans, logs, metrics):
                try:
                    e.shutdown()
                except Exception:  # noqa: BLE001 - shutting down; nothing to report to
                    pass

    def _probe(self) -> None:
        """A clear warning at start when nothing listens at the endpoint (traffic is served
        regardless; exports are retried)."""
        host, port = host_port(self.config.endpoint, self.config.protocol)
        try:
            socket.create_connection((host, port), timeout=2).close()
            logger.info("OTLP endpoint reachable", extra={"endpoint": self.config.endpoint})
        except OSError as e:
            logger.warning("OTLP endpoint %s (%s) is unreachable: %s; telemetry is buffered and retried",
                           self.config.endpoint, self.config.protocol, e.strerror or e)

    def _export_metrics(self, exporter, conv: Converter) -> bool | None:
        """True: exported; False: the receiver refused or was unreachable; None: nothing due."""
        with self._lock:
            snap, self._snapshot = self._snapshot, None
        if snap is None:
            return None
        data = metrics_data(snap, conv.resource, self._start_ns, time.time_ns())
        if exporter.export(data, timeout_millis=self.config.timeout_s * 1000) is MetricExportResult.SUCCESS:
            self.counts["metrics_exported"] += 1
            return True
        with self._lock:
            self._snapshot = self._snapshot or snap  # a newer one replaces it; cumulative anyway
        return False

    def _export_window(self, span_exporter, log_exporter, conv: Converter) -> bool | None:
        with self._lock:
            window = [self._buf[i] for i in range(min(SEND_WINDOW, len(self._buf)))]
        if not window:
            return None
        for rec, doc in window:
            conv.span(rec, doc)
            conv.log(rec, doc)
        spans, logs = conv.take()
        if spans and span_exporter.export(spans) is not SpanExportResult.SUCCESS:
            return False
        if logs and log_exporter.export(logs) is not LogRecordExportResult.SUCCESS:
            return False  # the spans go again with the window: at least once, like Kafka
        with self._lock:
            for _ in window:
                self._buf.popleft()
            self.counts["delivered"] += len(window)
            self.counts["spans_exported"] += len(spans)
            self.counts["logs_exported"] += len(logs)
        return True
