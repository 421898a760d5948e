"""The lab's OTLP receiver: the real protocol (gRPC services from ``opentelemetry-proto``
on one port, OTLP/HTTP protobuf or JSON on another), every export appended to a JSON
lines file that tests and operators read.

No collector binary is packaged here (NOTES.md), so this stands in for one:
``python -m agent.lab.otlp --host H --grpc-port 4317 --http-port 4318 --out FILE``.
Each line is ``{"signal": "traces|logs|metrics", "transport": "grpc|http", "request":
<the Export*ServiceRequest as protobuf's JSON mapping>}``. ``--fail-first N`` answers
the first N exports with UNAVAILABLE / 503 (for retry tests).
"""

from __future__ import annotations

import argparse
import base64
import json
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as logs_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as metrics_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as trace_grpc

REQUESTS = {"traces": (trace_pb.ExportTraceServiceRequest, trace_pb.ExportTraceServiceResponse),
            "logs": (logs_pb.ExportLogsServiceRequest, logs_pb.ExportLogsServiceResponse),
            "metrics": (metrics_pb.ExportMetricsServiceRequest, metrics_pb.ExportMetricsServiceResponse)}


class Store:
    def __init__(self, path: str, fail_first: int = 0) -> None:
        self._f = open(path, "a", buffering=1)
        self._lock = threading.Lock()
        self._fail = fail_first

    def should_fail(self) -> bool:
        with self._lock:
            if self._fail > 0:
                self._fail -= 1
                return True
            return False

    def add(self, signal: str, transport: str, req) -> None:
        line = json.dumps({"signal": signal, "transport": transport,
                           "request": hex_ids(json_format.MessageToDict(req))})
        with self._lock:
            self._f.write(line + "\n")


# OTLP/JSON writes trace and span ids as hex (the access log's form), where protobuf's
# JSON mapping would give base64: the received file can be grepped for a log's trace id.
_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def hex_ids(obj):
    if isinstance(obj, dict):
        return {k: base64.b64decode(v).hex() if k in _ID_KEYS and isinstance(v, str) and v else hex_ids(v)
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [hex_ids(v) for v in obj]
    return obj


def _servicer(base, method: str, signal: str, store: Store):
    resp_type = REQUESTS[signal][1]

    def export(self, request, context):
        if store.should_fail():
            context.abort(grpc.StatusCode.UNAVAILABLE, "lab receiver: failing on purpose")
        store.add(signal, "grpc", request)
        return resp_type()

    return type(f"{signal.title()}Receiver", (base,), {method: export})()


def serve_grpc(host: str, port: int, store: Store) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_grpc.add_TraceServiceServicer_to_server(_servicer(trace_grpc.TraceServiceServicer, "Export", "traces", store),
                                                  server)
    logs_grpc.add_LogsServiceServicer_to_server(_servicer(logs_grpc.LogsServiceServicer, "Export", "logs", store),
                                                server)
    metrics_grpc.add_MetricsServiceServicer_to_server(
        _servicer(metrics_grpc.MetricsServiceServicer, "Export", "metrics", store), server)
    server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server


def http_handler(store: Store):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 - http.server's naming
            signal = self.path.rstrip("/").rsplit("/", 1)[-1]
            if signal not in REQUESTS or not self.path.startswith("/v1/"):
                return self._answer(404, b"unknown OTLP path", "text/plain")
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if store.should_fail():
                return self._answer(503, b"failing on purpose", "text/plain")
            req_type, resp_type = REQUESTS[signal]
            req = req_type()
            json_body = "json" in (self.headers.get("content-type") or "")
            try:
                json_format.Parse(body, req) if json_body else req.ParseFromString(body)
            except Exception as e:  # noqa: BLE001 - any undecodable body is the client's error
                return self._answer(400, str(e).encode(), "text/plain")
            store.add(signal, "http", req)
            out = resp_type()
            if json_body:
                return self._answer(200, json_format.MessageToJson(out).encode(), "application/json")
            return self._answer(200, out.SerializeToString(), "application/x-protobuf")

        def _answer(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return Handler


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m agent.lab.otlp", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--grpc-port", type=int, default=4317)
    ap.add_argument("--http-port", type=int, default=4318)
    ap.add_argument("--out", required=True)
    ap.add_argument("--fail-first", type=int, default=0)
    a = ap.parse_args(argv)
    store = Store(a.out, a.fail_first)
    grpc_server = serve_grpc(a.host, a.grpc_port, store)
    httpd = ThreadingHTTPServer((a.host, a.http_port), http_handler(store))
    try:
        httpd.serve_forever()
    finally:
        grpc_server.stop(0)


if __name__ == "__main__":
    main()
