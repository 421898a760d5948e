"""Prometheus metrics with Istio's standard names and labels, so existing dashboards
work unchanged; label sets are bounded (beyond ``max_series`` per metric new ones fold
into one ``other`` series, counted). Snapshots are plain dicts, so a supervisor can
merge several worker processes' (``merge``)."""

from __future__ import annotations

from collections import defaultdict

TCP_LABELS = ("reporter", "source_workload", "source_workload_namespace", "source_principal",
              "destination_workload", "destination_workload_namespace", "destination_principal",
              "connection_security_policy", "response_flags")
HTTP_LABELS = TCP_LABELS[:-1] + ("request_protocol", "response_code")
COUNTERS = {
    "istio_tcp_connections_opened_total": ("Connections opened.", TCP_LABELS),
    "istio_tcp_connections_closed_total": ("Connections closed.", TCP_LABELS),
    "istio_tcp_sent_bytes_total": ("Bytes sent towards the destination.", TCP_LABELS),
    "istio_tcp_received_bytes_total": ("Bytes received back from the destination.", TCP_LABELS),
    "istio_requests_total": ("HTTP requests.", HTTP_LABELS),
    "hostmesh_policy_decisions_total": ("Authorization decisions.", ("verdict", "policy")),
    "hostmesh_telemetry_dropped_total": ("Telemetry records dropped.", ("sink", "reason")),
    "hostmesh_telemetry_exported_total": ("Telemetry records delivered.", ("sink",)),
    "hostmesh_telemetry_export_failures_total": ("Telemetry export failures.", ("sink",)),
    "hostmesh_metrics_series_overflow_total": ("Label sets folded into 'other'.", ("metric",)),
}
# Gauges whose labels are not the default ("name"): the traffic rules' per-endpoint state.
GAUGE_LABELS = {"hostmesh_endpoint_ejected": ("cluster", "endpoint", "reason"),
                "hostmesh_endpoint_connections": ("cluster", "endpoint")}
BUCKETS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class Metrics:
    def __init__(self, max_series: int = 10000) -> None:
        self.max_series = max_series
        self.counters: dict[str, dict[tuple, float]] = defaultdict(dict)
        self.gauges: dict[str, dict[tuple, float]] = defaultdict(dict)
        self.hist: dict[tuple, list] = {}  # labels -> [bucket counts..., sum, count]
        self.minmax: dict[tuple, list] = {}  # labels -> [min, max] (OTLP histograms carry both)

    def inc(self, name: str, labels: tuple, v: float = 1) -> None:
        series = self.counters[name]
        if labels not in series and len(series) >= self.max_series:
            labels = tuple("other" for _ in labels)
            o = self.counters["hostmesh_metrics_series_overflow_total"]
            o[(name,)] = o.get((name,), 0) + 1
        series[labels] = series.get(labels, 0) + v

    def set_gauge(self, name: str, labels: tuple, v: float) -> None:
        self.gauges[name][labels] = v

    def observe_ms(self, labels: tuple, ms: float) -> None:
        h = self.hist.setdefault(labels, [0] * len(BUCKETS_MS) + [0.0, 0])
        for i, b in enumerate(BUCKETS_MS):
            if ms <= b:
                h[i] += 1
        h[-2] += ms
        h[-1] += 1
        mm = self.minmax.get(labels)
        if mm is None:
            self.minmax[labels] = [ms, ms]
        else:
            mm[0], mm[1] = min(mm[0], ms), max(mm[1], ms)

    def snapshot(self) -> dict:
        return {"counters": {k: [[list(lb), v] for lb, v in s.items()] for k, s in self.counters.items()},
                "gauges": {k: [[list(lb), v] for lb, v in s.items()] for k, s in self.gauges.items()},
                "hist": [[list(lb), h] for lb, h in self.hist.items()],
                "minmax": [[list(lb), mm] for lb, mm in self.minmax.items()]}

    def merge(self, snap: dict) -> None:
        for k, rows in snap.get("counters", {}).items():
            for lb, v in rows:
                self.inc(k, tuple(lb), v)
        for k, rows in snap.get("gauges", {}).items():
            for lb, v in rows:
                self.gauges[k][tuple(lb)] = self.gauges[k].get(tuple(lb), 0) + v
        for lb, h in snap.get("hist", []):
            mine = self.hist.setdefault(tuple(lb), [0] * len(BUCKETS_MS) + [0.0, 0])
            for i, v in enumerate(h):
                mine[i] += v
        for lb, (lo, hi) in snap.get("minmax", []):
            mm = self.minmax.setdefault(tuple(lb), [lo, hi])
            mm[0], mm[1] = min(mm[0], lo), max(mm[1], hi)

    def render(self) -> str:
        out = []
        for name, series in sorted(self.counters.items()):
            help_, names = COUNTERS.get(name, ("", ()))
            out += [f"# HELP {name} {help_}", f"# TYPE {name} counter"]
            for lb, v in series.items():
                out.append(f"{name}{_labels(names, lb)} {_num(v)}")
        for name, series in sorted(self.gauges.items()):
            out += [f"# TYPE {name} gauge"]
            for lb, v in series.items():
                names = GAUGE_LABELS.get(name, ("identity",) if "cert" in name else ("name",))
                out.append(f"{name}{_labels(names, lb)} {_num(v)}")
        if self.hist:
            name = "istio_request_duration_milliseconds"
            out += [f"# HELP {name} HTTP request duration.", f"# TYPE {name} histogram"]
            for lb, h in self.hist.items():
                for i, b in enumerate(BUCKETS_MS):
                    out.append(f"{name}_bucket{_labels(HTTP_LABELS + ('le',), lb + (str(b),))} {h[i]}")
                out.append(f"{name}_bucket{_labels(HTTP_LABELS + ('le',), lb + ('+Inf',))} {h[-1]}")
                out.append(f"{name}_sum{_labels(HTTP_LABELS, lb)} {_num(h[-2])}")
                out.append(f"{name}_count{_labels(HTTP_LABELS, lb)} {h[-1]}")
        return "\n".join(out) + "\n"


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


def tcp_labels(rec) -> tuple:
    """Istio's TCP label values for a ConnRecord."""
    return (
        "source" if rec.direction == "outbound" else "destination",
        rec.src.workload or "unknown", rec.src.namespace or "unknown", _spiffe(rec.src.principal),
        rec.dst.workload or "unknown", rec.dst.namespace or "unknown", _spiffe(rec.dst.principal),
        "mutual_tls" if rec.mode == "tunnel" else "none",
        getattr(rec, "response_flags", None) or ("-" if rec.verdict != "deny" else "UAEX"),
    )


def _spiffe(p: str | None) -> str:
    return p if p else "unknown"
