"""`hostmesh bench --quick` runs end to end (the harness, not the targets: CI machines are
shared and noisy, so figures are reported, never asserted)."""

import json
from pathlib import Path

import pytest

from tests.lab.conftest import hm


@pytest.mark.slow
def test_bench_quick_produces_every_scenario_on_every_path(tmp_path):
    out = tmp_path / "bench.json"
    r = hm("bench", "--quick", "--json", str(out), "--plots", str(tmp_path / "img"), timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert set(doc["machine"]) == {"cpus", "kernel", "python"}
    got = {(x["scenario"], x["path"]) for x in doc["results"]}
    for path in ("direct", "haproxy", "hostmesh"):
        for scenario in ("bulk-1", "bulk-4", "pingpong", "http-1000rps", "http-l7-1000rps", "connect-rate"):
            assert (scenario, path) in got, (scenario, path, doc["errors"])
    assert ("pingpong", "hostmesh-same-node") in got and ("bulk-4", "hostmesh-2-threads") in got
    # the no-crypto floor beside haproxy: bulk and ping-pong only
    assert {x for x in got if x[1] == "haproxy-plain"} == {(s, "haproxy-plain") for s in ("bulk-1", "bulk-4", "pingpong")}
    assert ("http-l7-1000rps", "hostmesh-telemetry-off") in got
    assert ("idle-10k", "hostmesh") in got and ("policy-10k", "hostmesh") in got
    idle = {x["metric"]: x["value"] for x in doc["results"] if (x["scenario"], x["path"]) == ("idle-10k", "hostmesh")}
    assert idle["connections"] == 500 and idle["tls_connections"] >= 1
    assert all(x["value"] > 0 for x in doc["results"] if x["metric"] in ("gbit_s", "conn_per_s", "p50_us"))
    # the L7 run's requests all pass the rule (a denied one was refused with 403 first)
    assert not [x for x in doc["results"] if x["metric"] == "errors"]
    # every variant starts (HTTP/1.1 CONNECT beside HBONE included) and nothing failed
    assert doc["errors"] == []
    assert ("bulk-1", "hostmesh-connect") in got
    names = {t["name"] for t in doc["targets"]}
    assert "bulk-1 vs haproxy" in names and all("met" in t for t in doc["targets"])
    assert list((tmp_path / "img").glob("*.png"))


@pytest.mark.slow
def test_bench_only_and_paths_select_a_subset(tmp_path):
    out = tmp_path / "bench.json"
    r = hm("bench", "--quick", "--only", "pingpong", "--paths", "direct,hostmesh", "--json", str(out), timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert {(x["scenario"], x["path"]) for x in doc["results"]} == {("pingpong", "direct"), ("pingpong", "hostmesh")}
    assert doc["errors"] == []


@pytest.mark.slow
def test_bench_ztunnel_path_runs_a_given_binary(tmp_path):
    """`--ztunnel BIN` with a stand-in that checks ztunnel's environment and relays through
    the bench's REDIRECT capture: every scenario but the L7 one on the path ``ztunnel``."""
    out = tmp_path / "bench.json"
    fake = Path(__file__).parent / "fake_ztunnel.py"
    r = hm("bench", "--quick", "--paths", "ztunnel", "--ztunnel", str(fake), "--json", str(out), timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["errors"] == []
    got = {x["scenario"] for x in doc["results"] if x["path"] == "ztunnel"}
    assert got == {"bulk-1", "bulk-4", "pingpong", "http-1000rps", "connect-rate", "idle-10k"}
    idle = {x["metric"]: x["value"] for x in doc["results"] if x["scenario"] == "idle-10k"}
    # the stand-in does not multiplex: one connection to :15008 per held connection (and a straggler
    # of the scenario before, closing)
    assert idle["connections"] == 500 and 500 <= idle["tls_connections"] <= 505


def test_bench_refuses_a_missing_or_non_executable_ztunnel(tmp_path):
    r = hm("bench", "--ztunnel", str(tmp_path / "ztunnel"))
    assert (r.returncode, r.stderr.strip()) == (2, f"hostmesh bench: --ztunnel {tmp_path / 'ztunnel'}: no such file")
    (tmp_path / "ztunnel").write_text("")
    r = hm("bench", "--ztunnel", str(tmp_path / "ztunnel"))
    assert r.returncode == 2 and r.stderr.strip().endswith("not executable (chmod +x it)")
