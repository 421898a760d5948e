"""Parsers for the load tools' output and the target arithmetic (agent.bench)."""

import json

import pytest

from agent.bench import parse
from agent.bench.targets import compute

SOCKPERF = """sockperf: ---> <MAX> observation =  368.515
sockperf: ---> percentile 99.999 =  368.515
sockperf: ---> percentile 99.900 =   24.691
sockperf: ---> percentile 99.000 =   16.505
sockperf: ---> percentile 50.000 =    9.487
"""


def test_sockperf():
    assert parse.sockperf_percentiles(SOCKPERF) == {"p50_us": 9.487, "p99_us": 16.505, "p999_us": 24.691}
    with pytest.raises(parse.ToolOutputError):
        parse.sockperf_percentiles("sockperf: ERROR: connection refused")


def test_iperf3():
    doc = {"end": {"sum_received": {"bits_per_second": 5.5e9}}}
    assert parse.iperf3_gbit(json.dumps(doc)) == 5.5
    with pytest.raises(parse.ToolOutputError, match="unable to connect"):
        parse.iperf3_gbit(json.dumps({"error": "unable to connect to server"}))


def test_hey_csv_counts_only_successes():
    text = "response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset\n"
    text += "".join(f"0.00{i},0,0,0,0,0,200,{i / 10}\n" for i in range(1, 10))
    text += "0.5,0,0,0,0,0,503,0.95\n"
    h = parse.hey_csv(text)
    assert h["requests"] == 9 and h["errors"] == 1
    assert h["p50_ms"] == pytest.approx(5.0)
    assert h["rps"] == pytest.approx(9 / 0.909)


def test_percentile_interpolates():
    assert parse.percentile([1, 2, 3, 4], 50) == 2.5
    assert parse.percentile([7], 99) == 7


def test_proc_parsers():
    stat = "123 (python3 -m a) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0"
    assert parse.proc_cpu_seconds(stat, 100) == 4.0
    assert parse.proc_rss_kib("Name: x\nVmRSS:\t  2048 kB\n") == 2048


def r(s, p, m, v):
    return {"scenario": s, "path": p, "metric": m, "value": v}


def test_targets_ratios_and_missing_inputs():
    results = [
        r("bulk-1", "haproxy", "gbit_s", 5.0), r("bulk-1", "hostmesh", "gbit_s", 4.0),
        r("pingpong", "direct", "p50_us", 80), r("pingpong", "haproxy", "p50_us", 130),
        r("pingpong", "hostmesh", "p50_us", 140),
    ]
    t = {x["name"]: x for x in compute(results)}
    assert t["bulk-1 vs haproxy"]["value"] == 0.8 and not t["bulk-1 vs haproxy"]["met"]
    assert t["pingpong added p50 vs haproxy's"]["value"] == 1.2 and t["pingpong added p50 vs haproxy's"]["met"]
    assert t["connect-rate vs haproxy"]["value"] is None and not t["connect-rate vs haproxy"]["met"]
    assert t["connect-rate vs haproxy"]["note"]
