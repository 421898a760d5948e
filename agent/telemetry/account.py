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
from agent.telemetry.metrics import Metrics, count_in

# Label tuples of recent (reporter, mode, peers, service): the connections between two
# workloads share them, so each is derived once, not per connection. A peer is keyed on
# the fields the labels read and on its labels mapping's identity; the entry holds those
# mappings (and the context), so an id in a key cannot be reused while the entry lives.
# Bounded: cleared when full (the registry bounds the series themselves).
_TCP_LABELS_CACHE: dict = {}
_TCP_LABELS_CACHE_MAX = 4096


def _peer_key(ep) -> tuple:
    return (ep.workload, ep.namespace, ep.principal, ep.node, id(ep.labels))


def cached_tcp_labels(rec, ctx: LabelContext) -> tuple[str, ...]:
    """``istio.tcp_labels(rec, ctx)``, derived once per distinct key."""
    key = (rec.direction, rec.mode, _peer_key(rec.src), _peer_key(rec.dst), rec.service, id(ctx))
    hit = _TCP_LABELS_CACHE.get(key)
    if hit is None:
        if len(_TCP_LABELS_CACHE) >= _TCP_LABELS_CACHE_MAX:
            _TCP_LABELS_CACHE.clear()
        hit = _TCP_LABELS_CACHE[key] = (tcp_labels(rec, ctx), rec.src.labels, rec.dst.labels, ctx)
    return hit[0]


def opened(m: Metrics, rec, ctx: LabelContext) -> TcpAccount:
    acct = TcpAccount(cached_tcp_labels(rec, ctx))
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
# cleared when full (the registry bounds the series themselves). The first table is
# keyed on the objects' identities (a connection's requests share its endpoints, so no
# dataclass hash per request; each entry holds those objects, so their ids cannot be
# reused while it lives), the second on their values (equal ends of other connections).
_HTTP_BY_ID: dict = {}
_HTTP_LABELS_CACHE: dict = {}
_HTTP_LABELS_CACHE_MAX = 4096


def request(m: Metrics, req, ctx: LabelContext) -> None:
    requests(m, (req,), ctx)


def requests(m: Metrics, reqs, ctx: LabelContext) -> None:
    """``request`` of each of ``reqs`` in order, the lookups hoisted (one call per batch of
    the core's exchanges)."""
    by_id, count, cid = _HTTP_BY_ID, m.count_request, id(ctx)
    for req in reqs:
        src, dst, svc = req.src, req.dst, req.service
        hit = by_id.get((req.direction, req.mode, id(src), id(dst), id(svc), req.status, req.flags, cid))
        if hit is None:
            hit = _http_labels(req, ctx)
        duration = (req.end - req.start) * 1000.0
        duration = duration if duration > 0.0 else 0.0
        if hit[5] is m:  # this registry's series for the labels, remembered in the entry
            count_in(hit[6], hit[0], duration, req.request_bytes, req.response_bytes)
        else:
            count(hit[0], duration, req.request_bytes, req.response_bytes)
            series = m.request_series(hit[0])
            if series is not None:  # not while the label set folds into "other"
                hit[5], hit[6] = m, series


def _http_labels(req, ctx: LabelContext) -> list:
    """The [labels, src, dst, service, ctx, registry, its series] entry of
    ``_HTTP_BY_ID`` for ``req``, derived and stored (the registry and its series for
    the labels filled in by ``requests`` once the registry holds them)."""
    src, dst, svc = req.src, req.dst, req.service
    fast = (req.direction, req.mode, id(src), id(dst), id(svc), req.status, req.flags, id(ctx))
    key = (req.direction, req.mode, src, dst, id(src.labels), id(dst.labels), svc, req.status, req.flags,
           id(ctx))
    lb = _HTTP_LABELS_CACHE.get(key)
    if lb is None:
        if len(_HTTP_LABELS_CACHE) >= _HTTP_LABELS_CACHE_MAX:
            _HTTP_LABELS_CACHE.clear()
        lb = _HTTP_LABELS_CACHE[key] = http_labels(req, ctx)
    if len(_HTTP_BY_ID) >= _HTTP_LABELS_CACHE_MAX:
        _HTTP_BY_ID.clear()
    hit = _HTTP_BY_ID[fast] = [lb, src, dst, svc, ctx, None, None]
    return hit
