"""Records into Istio's series: when each counter moves, as ztunnel moves it.

Pure functions of a ``Metrics`` registry, records and byte counts (no sockets, no
clock), shared by every data path:
- ``opened``: a connection is established -> ``istio_tcp_connections_opened_total``
  (flags ``-``) and ``istio_tcp_sockets_open``; returns the ``TcpAccount`` that remembers
  what was counted.
- ``flow``: the live byte counts of a connection -> the byte counters, as they flow.
  Directions as Istio's (ztunnel's copy.rs): ``received`` is what the client sent
  towards the server, ``sent`` is what came back.
- ``closed``: the finished record -> the last bytes, ``..._closed_total`` and, when it
  never got through (``DENY``, ``UF``, ...), ``..._failed_total``, both with the final
  flag. A connection refused before it opened is opened and closed at once.
- ``request``: one HTTP exchange -> ``istio_requests_total`` and the duration, request
  and response size histograms.
"""

from __future__ import annotations

from agent.telemetry.istio import (
    FAILED_FLAGS,
    LabelContext,
    TcpAccount,
    http_labels,
    response_flags,
    tcp_labels,
    with_flags,
)
from agent.telemetry.metrics import Metrics

# Label tuples of live connections, one object per distinct series: thousands of idle
# connections between the same pods share one tuple (~250 bytes each otherwise). Bounded
# like the series themselves; past it, it starts over (a new tuple per connection again).
_SHARED_LABELS_MAX = 4096
_shared_labels: dict[tuple[str, ...], tuple[str, ...]] = {}


def _shared(labels: tuple[str, ...]) -> tuple[str, ...]:
    got = _shared_labels.get(labels)
    if got is None:
        if len(_shared_labels) >= _SHARED_LABELS_MAX:
            _shared_labels.clear()
        got = _shared_labels[labels] = labels
    return got


def opened(m: Metrics, rec, ctx: LabelContext) -> TcpAccount:
    acct = TcpAccount(_shared(tcp_labels(rec, ctx)))
    m.inc("istio_tcp_connections_opened_total", acct.labels)
    m.add_gauge("istio_tcp_sockets_open", acct.labels[:1], 1)
    return acct


def flow(m: Metrics, acct: TcpAccount, to_server: int, to_client: int) -> None:
    up, down = acct.delta(to_server, to_client)
    if up:
        m.inc("istio_tcp_received_bytes_total", acct.labels, up)
    if down:
        m.inc("istio_tcp_sent_bytes_total", acct.labels, down)


def closed(m: Metrics, acct: TcpAccount | None, rec, ctx: LabelContext) -> None:
    established = acct is not None
    if acct is None:
        acct = opened(m, rec, ctx)
    flow(m, acct, rec.bytes_sent, rec.bytes_received)
    # a flag the data path set (traffic rules: UO, UF, URX, NR, UH) wins over the derived one
    flags = getattr(rec, "response_flags", None) or response_flags(rec.verdict, rec.reason, established)
    final = with_flags(acct.labels, flags) if flags != "-" else acct.labels
    m.inc("istio_tcp_connections_closed_total", final)
    if flags in FAILED_FLAGS:
        m.inc("istio_tcp_connections_failed_total", final)
    m.add_gauge("istio_tcp_sockets_open", acct.labels[:1], -1)


# Label tuples of recent (reporter, peers, service, status, flags): a keep-alive
# connection's requests share them, so each is derived once, not per request. Bounded:
# cleared when full (the registry bounds the series themselves).
_HTTP_LABELS_CACHE: dict = {}
_HTTP_LABELS_CACHE_MAX = 4096


def request(m: Metrics, req, ctx: LabelContext) -> None:
    key = (req.direction, req.mode, req.src, req.dst, id(req.src.labels), id(req.dst.labels), req.service, req.status,
           req.flags, id(ctx))
    lb = _HTTP_LABELS_CACHE.get(key)
    if lb is None:
        if len(_HTTP_LABELS_CACHE) >= _HTTP_LABELS_CACHE_MAX:
            _HTTP_LABELS_CACHE.clear()
        lb = _HTTP_LABELS_CACHE[key] = http_labels(req, ctx)
    m.inc("istio_requests_total", lb)
    m.observe("istio_request_duration_milliseconds", lb, max(0.0, (req.end - req.start) * 1000.0))
    m.observe("istio_request_bytes", lb, req.request_bytes)
    m.observe("istio_response_bytes", lb, req.response_bytes)
