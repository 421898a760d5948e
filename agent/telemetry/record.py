"""One record per finished connection (and per HTTP request), in SPEC.md's schema.

Records are what every data path reports (the trio relay, the HTTP inspector, a native
engine's finished-connection events); ``agent.telemetry.istio`` derives the metric
labels from them. Fields marked "not in the JSON record" feed the labels only."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _esc

# The access log's encoder (ensure_ascii, no spaces): ``json_line`` writes exactly its bytes.
encode = json.JSONEncoder(separators=(",", ":")).encode

_last_second: list = [None, ""]  # (whole second, its "YYYY-MM-DDTHH:MM:SS"): records come in bursts
_MS = tuple(f".{i:03d}Z" for i in range(1000))  # each millisecond's tail, formatted once


def rfc3339(t: float, _modf=math.modf, _last=_last_second, _ms=_MS) -> str:
    """UTC with milliseconds, as ``datetime.fromtimestamp(t, UTC).isoformat(timespec=
    "milliseconds")`` writes it (microseconds rounded half-even, then truncated to ms),
    with the formatted second reused while it lasts."""
    frac, whole = _modf(t)
    us = round(frac * 1e6)
    sec = int(whole)
    if us >= 1_000_000:
        sec, us = sec + 1, us - 1_000_000
    elif us < 0:
        sec, us = sec - 1, us + 1_000_000
    if _last[0] != sec:
        _last[0], _last[1] = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return _last[1] + _ms[us // 1000]


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    port: int
    workload: str | None = None
    namespace: str | None = None
    principal: str | None = None
    # not in the JSON record: the workload's labels (canonical service / revision) and
    # its node (locality); the workload's own read-only mapping, never a copy
    labels: Mapping[str, str] | None = field(default=None, compare=False)
    node: str | None = None

    def to_json(self) -> dict:
        return {"ip": self.ip, "port": self.port, "workload": self.workload, "namespace": self.namespace,
                "principal": self.principal}


@dataclass(frozen=True, slots=True)
class ConnRecord:
    start: float
    end: float
    node: str
    direction: str  # outbound | inbound
    mode: str  # tunnel | local | passthrough | plaintext
    src: Endpoint
    dst: Endpoint
    bytes_sent: int
    bytes_received: int
    verdict: str  # allow | deny | audit
    policy: str | None
    reason: str | None
    trace_id: str | None
    # not in the JSON record: OTLP spans use them to nest the destination's span under
    # the source's (the source's span id travels as the traceparent's parent id)
    span_id: str | None = None
    parent_span_id: str | None = None
    response_flags: str | None = None  # Envoy's: UO, UF, URX, NR, UH (traffic rules, docs/traffic.md)
    service: object | None = None  # istio.ServiceRef: the service dialled (labels only)

    def to_json(self) -> dict:
        out = {
            "type": "connection", "start": rfc3339(self.start), "end": rfc3339(self.end),
            "duration_ms": round((self.end - self.start) * 1000, 3), "node": self.node,
            "direction": self.direction, "mode": self.mode, "src": self.src.to_json(), "dst": self.dst.to_json(),
            "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received, "verdict": self.verdict,
            "policy": self.policy, "reason": self.reason, "trace_id": self.trace_id,
        }
        if self.response_flags:  # only when there is one: SPEC.md's schema otherwise, key for key
            out["response_flags"] = self.response_flags
        return out

    def json_line(self) -> str:
        """The access-log line (without its newline): one per connection, so the plain
        encoder (``RequestRecord.json_line`` is the per-request fast one)."""
        return encode(self.to_json())

    @property
    def key(self) -> str:
        """Kafka key: the source workload (SPEC.md)."""
        return f"{self.src.namespace}/{self.src.workload}" if self.src.workload else self.src.ip


# Not frozen, unlike the others: one is built per HTTP exchange and per reporter, and a
# frozen dataclass' __init__ (object.__setattr__ per field) costs 1.6 us where this one
# costs 0.2. Nothing changes a record once built.
@dataclass(slots=True)
class RequestRecord:
    start: float
    end: float
    node: str
    src: Endpoint
    dst: Endpoint
    method: str
    path: str
    host: str
    status: int
    verdict: str
    policy: str | None
    trace_id: str | None = None
    direction: str = "inbound"  # inbound: reported by the destination; outbound: by the source
    mode: str = "tunnel"  # the connection's: tunnel | local | plaintext (labels only)
    request_bytes: int = 0  # head and body as received (Istio's request.total_size)
    response_bytes: int = 0  # head and body as sent back (response.total_size)
    flags: str = "-"  # Envoy response flags (labels only)
    service: object | None = None  # istio.ServiceRef (labels only)

    def to_json(self) -> dict:
        return {
            "type": "request", "start": rfc3339(self.start), "end": rfc3339(self.end),
            "duration_ms": round((self.end - self.start) * 1000, 3), "node": self.node, "direction": self.direction,
            "src": self.src.to_json(), "dst": self.dst.to_json(), "method": self.method, "path": self.path,
            "host": self.host, "status": self.status, "verdict": self.verdict, "policy": self.policy,
            "request_bytes": self.request_bytes, "response_bytes": self.response_bytes, "trace_id": self.trace_id,
        }

    @property
    def key(self) -> str:
        return f"{self.src.namespace}/{self.src.workload}" if self.src.workload else self.src.ip

    def json_line(self) -> str:
        """``encode(self.to_json())``, byte for byte, at a fifth of its cost: the fields a
        connection's requests share (node, direction, both ends) are encoded once per
        connection (``_shared``), the request's words (method, path, host, verdict,
        policy, trace id) once per distinct set (``_words``), the rest here. Any value of
        a type other than the usual ones takes the encoder itself."""
        st, rq, rs = self.status, self.request_bytes, self.response_bytes
        dur = round((self.end - self.start) * 1000, 3)
        w = _words(self.method, self.path, self.host, self.verdict, self.policy, self.trace_id)
        if w is not None and type(st) is int and type(rq) is int and type(rs) is int and type(dur) is float \
                and dur - dur == 0.0:
            return (f'{{"type":"request","start":"{rfc3339(self.start)}","end":"{rfc3339(self.end)}",'
                    f'"duration_ms":{dur!r},{_shared(self)},{w[0]},"status":{st},{w[1]},"request_bytes":{rq},'
                    f'"response_bytes":{rs},"trace_id":{w[2]}}}')
        return encode(self.to_json())


# (method, path, host, verdict, policy, trace id) -> ('"method":..,"path":..,"host":..',
# '"verdict":..,"policy":..', the trace id's JSON): a keep-alive connection's requests
# repeat them. Only str values (policy and trace id also None) are kept, and a str equals
# only a str, so a hit is of the same types. Bounded: cleared when full.
_WORDS: dict = {}
_WORDS_MAX = 4096


def _words(m, p, h, v, pol, tr) -> tuple | None:
    key = (m, p, h, v, pol, tr)
    hit = _WORDS.get(key)
    if hit is None:
        if not (type(m) is str and type(p) is str and type(h) is str and type(v) is str
                and (pol is None or type(pol) is str) and (tr is None or type(tr) is str)):
            return None
        if len(_WORDS) >= _WORDS_MAX:
            _WORDS.clear()
        hit = _WORDS[key] = (f'"method":{_esc(m)},"path":{_esc(p)},"host":{_esc(h)}',
                             f'"verdict":{_esc(v)},"policy":{"null" if pol is None else _esc(pol)}',
                             "null" if tr is None else _esc(tr))
    return hit


# (node, direction, id(src), id(dst)) -> (src, dst, '"node":..,"direction":..,"src":{..},"dst":{..}'):
# a keep-alive connection's requests share their ends (agent.proxy.l7records builds them
# once per connection), so that part of the line is encoded once. The entry holds both
# endpoints, so an id in a key cannot be reused while the entry lives; endpoints are
# frozen, so the text stays theirs. Bounded: cleared when full.
_SHARED: dict = {}
_SHARED_MAX = 4096


def _shared(rec) -> str:
    src, dst = rec.src, rec.dst
    key = (rec.node, rec.direction, id(src), id(dst))
    hit = _SHARED.get(key)
    if hit is None:
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        text = encode({"node": rec.node, "direction": rec.direction, "src": src.to_json(), "dst": dst.to_json()})
        hit = _SHARED[key] = (src, dst, text[1:-1])
    return hit[2]
