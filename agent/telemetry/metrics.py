"""The metric registry: Istio's standard series (names, types and labels as the "Istio
Standard Metrics" reference and ztunnel give them) and hostmesh's own, rendered in
Prometheus' text format. Label sets are bounded: beyond ``max_series`` per metric new
ones fold into one ``other`` series, counted in ``hostmesh_metrics_series_overflow_total``.
Snapshots are plain dicts (the OTLP exporter reads them). Pure: no clock, no I/O;
label values come from ``agent.telemetry.istio``.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

from agent.telemetry.istio import BUCKETS, HTTP_LABELS, TCP_LABELS

COUNTERS = {
    "istio_tcp_connections_opened_total": ("The total number of TCP connections opened", TCP_LABELS),
    "istio_tcp_connections_closed_total": ("The total number of TCP connections closed", TCP_LABELS),
    "istio_tcp_connections_failed_total": ("The total number of TCP connections that failed to establish",
                                           TCP_LABELS),
    "istio_tcp_sent_bytes_total": ("The size of total bytes sent during response in case of a TCP connection",
                                   TCP_LABELS),
    "istio_tcp_received_bytes_total": ("The size of total bytes received during request in case of a TCP "
                                       "connection", TCP_LABELS),
    "istio_requests_total": ("The total number of requests", HTTP_LABELS),
    "hostmesh_policy_decisions_total": ("Authorization decisions.", ("verdict", "policy")),
    "hostmesh_telemetry_dropped_total": ("Telemetry records dropped.", ("sink", "reason")),
    "hostmesh_telemetry_exported_total": ("Telemetry records delivered.", ("sink",)),
    "hostmesh_telemetry_export_failures_total": ("Telemetry export failures.", ("sink",)),
    "hostmesh_metrics_series_overflow_total": ("Label sets folded into 'other'.", ("metric",)),
}
GAUGES = {
    "istio_tcp_sockets_open": ("The current number of open TCP sockets", ("reporter",)),
    "istio_build": ("Istio component build info", ("component", "tag")),
    # the traffic rules' per-endpoint state (docs/traffic.md)
    "hostmesh_endpoint_ejected": ("Endpoints ejected by outlier detection.", ("cluster", "endpoint", "reason")),
    "hostmesh_endpoint_connections": ("Connections per endpoint.", ("cluster", "endpoint")),
}
# name -> (help, labels, OTLP unit); all with Envoy's default bounds (istio.BUCKETS)
HISTOGRAMS = {
    "istio_request_duration_milliseconds": ("Request duration, to the end of the response", HTTP_LABELS, "ms"),
    "istio_request_bytes": ("Request size (head and body)", HTTP_LABELS, "By"),
    "istio_response_bytes": ("Response size (head and body)", HTTP_LABELS, "By"),
}
# the histograms every HTTP exchange moves, in count_request's argument order
REQUEST_HISTOGRAMS = ("istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes")
_NB = len(BUCKETS) + 1  # per-bucket counts, the last one beyond the highest bound
_LE = tuple(str(int(b)) if float(b).is_integer() else repr(float(b)) for b in BUCKETS)


class Metrics:
    def __init__(self, max_series: int = 10000) -> None:
        self.max_series = max_series
        self.counters: dict[str, dict[tuple, float]] = defaultdict(dict)
        self.gauges: dict[str, dict[tuple, float]] = defaultdict(dict)
        # name -> labels -> [count per bucket (not cumulative)..., sum, count, min, max]
        self.hist: dict[str, dict[tuple, list]] = defaultdict(dict)
        # HTTP label set -> [the istio_requests_total series, its three histograms' lists]
        self._requests: dict[tuple, list] = {}

    def _bounded(self, name: str, series: dict, labels: tuple) -> tuple:
        if labels not in series and len(series) >= self.max_series:
            o = self.counters["hostmesh_metrics_series_overflow_total"]
            o[(name,)] = o.get((name,), 0) + 1
            return tuple("other" for _ in labels)
        return labels

    def inc(self, name: str, labels: tuple, v: float = 1) -> None:
        series = self.counters[name]
        labels = self._bounded(name, series, labels)
        series[labels] = series.get(labels, 0) + v

    def set_gauge(self, name: str, labels: tuple, v: float) -> None:
        self.gauges[name][labels] = v

    def add_gauge(self, name: str, labels: tuple, v: float) -> None:
        series = self.gauges[name]
        series[labels] = series.get(labels, 0) + v

    def observe(self, name: str, labels: tuple, value: float) -> None:
        series = self.hist[name]
        labels = self._bounded(name, series, labels)
        h = series.get(labels)
        if h is None:
            h = series[labels] = [0] * _NB + [0.0, 0, value, value]
        _observe(h, value)

    def count_request(self, labels: tuple, duration_ms: float, request_bytes: int, response_bytes: int) -> None:
        """One HTTP exchange: ``inc("istio_requests_total")`` and ``observe`` of its three
        histograms, with the same effect, the series looked up once per label set. Only
        series already in the registry are remembered, so a label set folded into
        ``other`` still counts its overflow on every call."""
        s = self._requests.get(labels)
        if s is None:
            self.inc("istio_requests_total", labels)
            for name, v in zip(REQUEST_HISTOGRAMS, (duration_ms, request_bytes, response_bytes)):
                self.observe(name, labels, v)
            if labels in self.counters["istio_requests_total"] and all(labels in self.hist[n]
                                                                      for n in REQUEST_HISTOGRAMS):
                self._requests[labels] = [self.counters["istio_requests_total"]] + [self.hist[n][labels]
                                                                                    for n in REQUEST_HISTOGRAMS]
            return
        count_in(s, labels, duration_ms, request_bytes, response_bytes)

    def request_series(self, labels: tuple) -> list | None:
        """The series ``count_request`` remembered for ``labels`` ([istio_requests_total's
        series, its three histograms' lists]; None until it did): ``count_in`` moves them
        as ``count_request`` would, without looking them up."""
        return self._requests.get(labels)

    def snapshot(self) -> dict:
        return {"counters": {k: [[list(lb), v] for lb, v in s.items()] for k, s in self.counters.items()},
                "gauges": {k: [[list(lb), v] for lb, v in s.items()] for k, s in self.gauges.items()},
                "hist": {k: [[list(lb), h] for lb, h in s.items()] for k, s in self.hist.items()}}

    def render(self) -> str:
        out = []
        for name, series in sorted(self.counters.items()):
            help_, names = COUNTERS.get(name, ("", ()))
            out += [f"# HELP {name} {help_}", f"# TYPE {name} counter"]
            for lb, v in series.items():
                out.append(f"{name}{_labels(names, lb)} {_num(v)}")
        for name, series in sorted(self.gauges.items()):
            help_, names = GAUGES.get(name, ("", ("identity",) if "cert" in name else ("name",)))
            out += [f"# HELP {name} {help_}", f"# TYPE {name} gauge"]
            for lb, v in series.items():
                out.append(f"{name}{_labels(names, lb)} {_num(v)}")
        for name, series in sorted(self.hist.items()):
            help_, names, _unit = HISTOGRAMS.get(name, ("", HTTP_LABELS, ""))
            out += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
            for lb, h in series.items():
                base = _labels(names, lb)  # escaped once, shared by the 22 lines of the series
                open_ = f"{name}_bucket{base[:-1]},le="
                running = 0
                for i, le in enumerate(_LE):
                    running += h[i]
                    out.append(f'{open_}"{le}"}} {running}')
                out.append(f'{open_}"+Inf"}} {h[_NB + 1]}')
                out.append(f"{name}_sum{base} {_num(h[_NB])}")
                out.append(f"{name}_count{base} {h[_NB + 1]}")
        return "\n".join(out) + "\n"


def count_in(s: list, labels: tuple, duration_ms: float, request_bytes: int, response_bytes: int) -> None:
    """One HTTP exchange into the series ``Metrics.request_series`` gave for ``labels``."""
    s[0][labels] += 1
    _observe(s[1], duration_ms)
    _observe(s[2], request_bytes)
    _observe(s[3], response_bytes)


def _observe(h: list, value: float, _bisect=bisect.bisect_left, _sum=_NB, _count=_NB + 1, _min=_NB + 2,
             _max=_NB + 3) -> None:
    h[_bisect(BUCKETS, value)] += 1  # Prometheus' le: value <= bound
    h[_sum] += value
    h[_count] += 1
    if value < h[_min]:  # what min() and max() keep, without their calls
        h[_min] = value
    if value > h[_max]:
        h[_max] = value


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _esc(s) -> str:
    return str(s if s is not None else "unknown").replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names, values) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_esc(v)}"' for n, v in zip(names, values)) + "}"


def count_exports(metrics: Metrics, sink: str, seen: tuple[int, int], delivered: int, failures: int) -> tuple[int, int]:
    """A sink thread's running totals into the registry, from the thread that owns it
    (a registry written from two threads can change size under a scrape's iteration).
    Returns the totals now counted, for the next call."""
    if delivered > seen[0]:
        metrics.inc("hostmesh_telemetry_exported_total", (sink,), delivered - seen[0])
    if failures > seen[1]:
        metrics.inc("hostmesh_telemetry_export_failures_total", (sink,), failures - seen[1])
    return delivered, failures
