"""Parsers for the load tools' output and the target arithmetic (agent.bench)."""

import json

import pytest

from agent.bench import parse

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


def test_iperf3_bytes_is_what_the_server_received():
    doc = {"end": {"sum_received": {"bytes": 8_589_934_592, "bits_per_second": 8.6e9}}}
    assert parse.iperf3_bytes(json.dumps(doc)) == 8 * 2**30
    with pytest.raises(parse.ToolOutputError, match="sum_received.bytes"):
        parse.iperf3_bytes(json.dumps({"end": {"sum_received": {"bits_per_second": 1.0}}}))


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


def test_ss_peer_port_count():
    text = ("0 0 10.0.1.1:40000 10.0.0.1:15008\n0 0 10.0.1.1:40002 10.10.0.5:15008\n"
            "0 0 10.0.1.1:40004 10.0.0.1:25080\n0 0 [fd00::1]:4000 [fd00::2]:15008\ngarbage\n")
    assert parse.ss_peer_port_count(text, range(15008, 15009)) == 3
    assert parse.ss_peer_port_count(text, range(25000, 26000)) == 1
    assert parse.ss_peer_port_count("", [15008]) == 0


def test_find_key_nested_numbers_only():
    doc = {"engine": {"name": "native", "hbone_connections": 81}, "counters": {"x": 1}}
    assert parse.find_key(doc, "hbone_connections") == 81.0
    assert parse.find_key({"a": [{"k": True}, {"k": 3}]}, "k") == 3.0
    assert parse.find_key({"engine": {"name": "native"}}, "hbone_connections") is None


def test_repeated_runs_report_each_metrics_median_and_every_error():
    from agent.bench.scenarios import median_rows, repeated, row

    runs = [[row("pingpong", "hostmesh", "p50_us", v), row("pingpong", "hostmesh", "p99_us", w)]
            for v, w in ((30.0, 90.0), (31.0, 700.0), (29.0, 95.0))]
    # the stalled run's 700 us is not the figure; the metrics keep their order
    assert median_rows(runs) == [row("pingpong", "hostmesh", "p50_us", 30.0),
                                 row("pingpong", "hostmesh", "p99_us", 95.0)]
    # an even count takes the lower middle; errors from any run add up
    runs = [[row("http", "h", "p90_ms", 2.0)], [row("http", "h", "p90_ms", 1.0), row("http", "h", "errors", 3)],
            [row("http", "h", "p90_ms", 4.0)], [row("http", "h", "p90_ms", 3.0), row("http", "h", "errors", 1)]]
    assert median_rows(runs) == [row("http", "h", "p90_ms", 2.0), row("http", "h", "errors", 4)]
    calls = []
    assert repeated(lambda: calls.append(1) or [row("s", "p", "m", len(calls))], 3) == [row("s", "p", "m", 2)]
    assert len(calls) == 3
    assert repeated(lambda: [row("s", "p", "m", 1)], 0) == [row("s", "p", "m", 1)]  # at least once


def test_the_references_measured_before_and_after_the_agents_are_their_mean():
    from agent.bench.report import drift
    from agent.bench.scenarios import bracket, row

    before = [row("bulk-1", "haproxy", "gbit_s", 4.0), row("bulk-1", "haproxy", "cpu_s_per_gib", 3.0),
              row("connect-rate", "haproxy", "conn_per_s", 600), row("http-1000rps", "haproxy", "errors", 2)]
    after = [row("bulk-1", "haproxy", "gbit_s", 5.0), row("bulk-1", "haproxy", "cpu_s_per_gib", 2.0),
             row("http-1000rps", "haproxy", "errors", 1), row("pingpong", "haproxy", "p50_us", 80)]
    rows, pairs = bracket(before, after)
    # each pair's mean, errors summed, a row measured once kept as it was, in order
    assert rows == [row("bulk-1", "haproxy", "gbit_s", 4.5), row("bulk-1", "haproxy", "cpu_s_per_gib", 2.5),
                    row("connect-rate", "haproxy", "conn_per_s", 600), row("http-1000rps", "haproxy", "errors", 3),
                    row("pingpong", "haproxy", "p50_us", 80)]
    assert [(p["scenario"], p["metric"], p["before"], p["after"]) for p in pairs] == [
        ("bulk-1", "gbit_s", 4.0, 5.0), ("bulk-1", "cpu_s_per_gib", 3.0, 2.0), ("http-1000rps", "errors", 2, 1)]
    assert bracket(before, []) == (before, [])
    # the report's table: one line per pair with after / before
    text = "\n".join(drift({"brackets": pairs}))
    assert "| bulk-1 | haproxy | gbit_s | 4 | 5 | 1.25 |" in text and "| bulk-1 | haproxy | cpu_s_per_gib | 3 | 2 | 0.67 |" in text
    assert drift({}) == [] and drift({"brackets": []}) == []
