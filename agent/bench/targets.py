"""The performance targets of issue 6, as ratios computed from one run's results.

Pure: results in, target rows out. Each row says what was compared, the measured value,
the goal and whether it was met; a target whose inputs are missing is reported as such,
never silently dropped.
"""

from __future__ import annotations

from typing import Any


def _get(results: list[dict], scenario: str, path: str, metric: str) -> float | None:
    for r in results:
        if (r["scenario"], r["path"], r["metric"]) == (scenario, path, metric):
            return r["value"]
    return None


def _row(name: str, value: float | None, goal: str, met: bool | None, note: str = "") -> dict[str, Any]:
    row = {"name": name, "value": None if value is None else round(value, 3), "goal": goal,
           "met": bool(met) if value is not None else False}
    if value is None:
        row["note"] = note or "not measured"
    elif note:
        row["note"] = note
    return row


def compute(results: list[dict]) -> list[dict[str, Any]]:
    g = lambda s, p, m: _get(results, s, p, m)  # noqa: E731
    out = []

    hm, hp = g("bulk-1", "hostmesh", "gbit_s"), g("bulk-1", "haproxy", "gbit_s")
    v = hm / hp if hm and hp else None
    out.append(_row("bulk-1 vs haproxy", v, ">= 1.0", v is not None and v >= 1.0))

    d, hm, hp = g("pingpong", "direct", "p50_us"), g("pingpong", "hostmesh", "p50_us"), g("pingpong", "haproxy", "p50_us")
    v = None
    if None not in (d, hm, hp) and hp - d > 0:
        v = (hm - d) / (hp - d)
    out.append(_row("pingpong added p50 vs haproxy's", v, "<= 1.25", v is not None and v <= 1.25))

    d, hm, hp = g("http-1000rps", "direct", "p90_ms"), g("http-1000rps", "hostmesh", "p90_ms"), g("http-1000rps", "haproxy", "p90_ms")
    v = None
    if None not in (d, hm, hp):
        v = (hm - d) / max(hp - d, 0.01)
    out.append(_row("http-1000rps added p90 vs haproxy's", v, "<= 1.0", v is not None and v <= 1.0))

    v = g("http-1000rps", "hostmesh", "cpu_per_1k_req")
    out.append(_row("http-1000rps cores per 1k rps per agent", v, "<= 0.06", v is not None and v <= 0.06))

    hm, hp = g("connect-rate", "hostmesh", "conn_per_s"), g("connect-rate", "haproxy", "conn_per_s")
    v = hm / hp if hm and hp else None
    out.append(_row("connect-rate vs haproxy", v, ">= 1.0", v is not None and v >= 1.0))

    v = g("idle-10k", "hostmesh", "idle_agent_rss_mib")
    out.append(_row("idle agent RSS MiB", v, "<= 60", v is not None and v <= 60))
    v = g("idle-10k", "hostmesh", "kib_per_conn")
    out.append(_row("KiB per idle connection", v, "<= 4", v is not None and v <= 4))

    one, two = g("bulk-4", "hostmesh", "gbit_s"), g("bulk-4", "hostmesh-2-workers", "gbit_s")
    v = two / one if one and two else None
    out.append(_row("2 workers vs 1 (bulk-4)", v, ">= 1.6", v is not None and v >= 1.6,
                    "" if v is not None else "2-worker run not measured"))

    v = g("policy-10k", "hostmesh", "decision_p99_us")
    out.append(_row("policy decision p99 us (10k policies)", v, "< 20", v is not None and v < 20))
    v = g("policy-10k", "hostmesh", "load_s")
    out.append(_row("policy load s (10k policies)", v, "< 1", v is not None and v < 1))
    # issue 15: loading 10,000 policies must not delay a decision by more than a few ms
    v = g("policy-10k", "hostmesh", "load_decision_delay_p99_ms")
    out.append(_row("decision delay p99 ms while 10k policies load", v, "<= 5", v is not None and v <= 5))
    v = g("policy-10k", "hostmesh", "load_decision_delay_max_ms")
    out.append(_row("decision delay max ms while 10k policies load", v, "<= 10", v is not None and v <= 10))
    v = g("policy-10k", "hostmesh", "traffic_decision_p99_us")
    out.append(_row("traffic decision p99 us (1k endpoints, 100 rules)", v, "< 20", v is not None and v < 20))

    for metric, goal, ok in (("sync_s", "<= 3", lambda v: v <= 3), ("kib_per_pod", "<= 3", lambda v: v <= 3),
                             ("relist_peak_mib", "<= 300", lambda v: v <= 300),
                             ("event_p99_ms", "<= 50", lambda v: v <= 50),
                             ("cpu_ms_per_event", "<= 0.5", lambda v: v <= 0.5),
                             ("cpu_ms_per_irrelevant_event", "<= 0.05", lambda v: v <= 0.05),
                             ("probe_p99_ms", "<= 100", lambda v: v <= 100)):
        v = g("discovery-20000", "hostmesh", metric)
        out.append(_row(f"discovery 20k pods {metric}", v, goal, v is not None and ok(v),
                        "" if v is not None else "20,000 pods run in the full bench only"))

    se, re_ = g("bulk-1", "hostmesh", "gbit_s"), g("bulk-1", "hostmesh-trio-relay", "gbit_s")
    v = se / re_ if se and re_ else None
    out.append(_row("socket layer vs plain trio relay (bulk-1)", v, ">= 1.0", v is not None and v >= 1.0))

    on, off = g("http-1000rps", "hostmesh", "cpu_per_1k_req"), g("http-1000rps", "hostmesh-telemetry-off", "cpu_per_1k_req")
    v = on / off if on and off else None
    out.append(_row("telemetry on vs off (CPU at 1k rps)", v, "<= 1.05", v is not None and v <= 1.05,
                    "" if v is not None else "telemetry-off run not measured"))
    return out
