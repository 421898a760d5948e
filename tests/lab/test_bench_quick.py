"""`hostmesh bench --quick` runs end to end (the harness, not the targets: CI machines are
shared and noisy, so figures are reported, never asserted)."""

import json

import pytest

from tests.lab.conftest import hm


@pytest.mark.slow
def test_bench_quick_produces_every_scenario_on_every_path(tmp_path):
    out = tmp_path / "bench.json"
    r = hm("bench", "--quick", "--json", str(out), "--plots", str(tmp_path / "img"), timeout=420)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert set(doc["machine"]) == {"cpus", "kernel", "python"}
    got = {(x["scenario"], x["path"]) for x in doc["results"]}
    for path in ("direct", "haproxy", "hostmesh"):
        for scenario in ("bulk-1", "bulk-4", "pingpong", "http-1000rps", "connect-rate"):
            assert (scenario, path) in got, (scenario, path, doc["errors"])
    assert ("pingpong", "hostmesh-same-node") in got and ("bulk-1", "hostmesh-trio-relay") in got
    assert ("idle-10k", "hostmesh") in got and ("policy-10k", "hostmesh") in got
    assert all(x["value"] > 0 for x in doc["results"] if x["metric"] in ("gbit_s", "conn_per_s", "p50_us"))
    assert doc["errors"] == []
    names = {t["name"] for t in doc["targets"]}
    assert "bulk-1 vs haproxy" in names and all("met" in t for t in doc["targets"])
    assert list((tmp_path / "img").glob("*.png"))
