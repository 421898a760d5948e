"""The benchmark's targets (issues 16 and 17) as arithmetic over one run's rows, the path
and scenario selection, the merge of a re-run, and the HAProxy / ztunnel configurations
the bench generates (agent.bench: targets, runner, haproxy, ztunnel)."""

import re
from pathlib import Path

import pytest
import yaml

from agent.bench import haproxy, ztunnel
from agent.bench.runner import PATHS, SCENARIOS, Selection, merge
from agent.bench.targets import compute


def r(s, p, m, v):
    return {"scenario": s, "path": p, "metric": m, "value": v}


def by_name(results):
    return {x["name"]: x for x in compute(results)}


BASE = [
    r("bulk-1", "haproxy", "gbit_s", 4.0), r("bulk-1", "hostmesh", "gbit_s", 6.0),
    r("bulk-4", "haproxy", "gbit_s", 4.0), r("bulk-4", "hostmesh", "gbit_s", 5.9),
    r("pingpong", "direct", "p50_us", 40), r("pingpong", "haproxy", "p50_us", 80), r("pingpong", "hostmesh", "p50_us", 80),
    r("pingpong", "direct", "p99_us", 60), r("pingpong", "haproxy", "p99_us", 120), r("pingpong", "hostmesh", "p99_us", 136),
    r("http-1000rps", "direct", "p90_ms", 0.9), r("http-1000rps", "haproxy", "p90_ms", 1.7),
    r("http-1000rps", "hostmesh", "p90_ms", 1.8),
    r("http-1000rps", "haproxy", "cpu_per_1k_req", 0.04), r("http-1000rps", "hostmesh", "cpu_per_1k_req", 0.04),
    r("http-l7-1000rps", "direct", "p90_ms", 1.0), r("http-l7-1000rps", "haproxy", "p90_ms", 2.0),
    r("http-l7-1000rps", "hostmesh", "p90_ms", 2.25),
    r("http-l7-1000rps", "haproxy", "cpu_per_1k_req", 0.05), r("http-l7-1000rps", "hostmesh", "cpu_per_1k_req", 0.08),
    r("connect-rate", "haproxy", "conn_per_s", 900), r("connect-rate", "hostmesh", "conn_per_s", 2000),
    r("idle-10k", "hostmesh", "kib_per_conn", 6.0), r("idle-10k", "hostmesh", "idle_agent_rss_mib", 30),
    r("idle-10k", "hostmesh", "connections", 8000), r("idle-10k", "hostmesh", "tls_connections", 8000),
]


def test_every_issue_16_and_17_target_is_there_with_its_goal():
    t = by_name(BASE)
    want = {
        "bulk-1 vs haproxy": ">= 1.5", "bulk-4 vs haproxy": ">= 1.5",
        "pingpong added p50 vs haproxy's": "<= 1.0", "pingpong added p99 vs haproxy's": "<= 1.25",
        "http-1000rps added p90 vs haproxy's": "<= 1.0", "http-1000rps cores per 1k rps vs haproxy's": "<= 1.0",
        "http-l7-1000rps added p90 vs haproxy's (mode http)": "<= 1.25",
        "http-l7-1000rps cores per 1k rps vs haproxy's (mode http)": "<= 1.5",
        "connect-rate vs haproxy, one handshake per connection": ">= 2.0",
        "connect-rate vs haproxy, default tunnel": ">= 3.0",
        "KiB per idle connection per agent (issue 16)": "<= 8", "KiB per idle connection per agent (issue 17)": "<= 4",
        "idle agent RSS MiB": "<= 60", "TLS connections per 10,000 idle connections": "<= 100",
    }
    assert {k: t[k]["goal"] for k in want} == want
    # the obsolete targets of the Python data plane are gone
    for gone in ("2 workers vs 1 (bulk-4)", "socket layer vs plain trio relay (bulk-1)",
                 "http-1000rps cores per 1k rps per agent", "KiB per idle connection"):
        assert gone not in t


def test_values_and_verdicts():
    t = by_name(BASE)
    assert (t["bulk-1 vs haproxy"]["value"], t["bulk-1 vs haproxy"]["met"]) == (1.5, True)
    assert (t["bulk-4 vs haproxy"]["value"], t["bulk-4 vs haproxy"]["met"]) == (1.475, False)
    assert (t["pingpong added p50 vs haproxy's"]["value"], t["pingpong added p50 vs haproxy's"]["met"]) == (1.0, True)
    assert t["pingpong added p99 vs haproxy's"]["value"] == pytest.approx(1.267)
    assert not t["pingpong added p99 vs haproxy's"]["met"]
    assert t["http-1000rps added p90 vs haproxy's"]["value"] == pytest.approx(1.125)
    assert not t["http-1000rps added p90 vs haproxy's"]["met"]
    assert t["http-1000rps cores per 1k rps vs haproxy's"]["met"]
    assert t["http-l7-1000rps added p90 vs haproxy's (mode http)"]["value"] == 1.25
    assert t["http-l7-1000rps added p90 vs haproxy's (mode http)"]["met"]
    assert t["http-l7-1000rps cores per 1k rps vs haproxy's (mode http)"]["value"] == 1.6
    assert not t["http-l7-1000rps cores per 1k rps vs haproxy's (mode http)"]["met"]
    one = t["connect-rate vs haproxy, one handshake per connection"]
    assert (one["value"], one["met"], one["note"]) == (2.222, True, "path hostmesh")
    assert not t["connect-rate vs haproxy, default tunnel"]["met"]
    assert t["KiB per idle connection per agent (issue 16)"]["met"]
    assert not t["KiB per idle connection per agent (issue 17)"]["met"]
    tls = t["TLS connections per 10,000 idle connections"]
    assert (tls["value"], tls["met"]) == (10000, False)
    assert tls["note"] == "8000 TLS connections for 8000 held"


def test_connect_rate_with_one_handshake_uses_the_connect_variant_when_measured():
    rows = BASE + [r("connect-rate", "hostmesh-connect", "conn_per_s", 1500)]
    t = by_name(rows)
    one = t["connect-rate vs haproxy, one handshake per connection"]
    assert (one["value"], one["met"], one["note"]) == (1.667, False, "path hostmesh-connect")
    assert t["connect-rate vs haproxy, default tunnel"]["value"] == pytest.approx(2.222)


def test_multiplexed_idle_connections_meet_the_tls_target():
    rows = [x for x in BASE if x["metric"] != "tls_connections"] + [r("idle-10k", "hostmesh", "tls_connections", 81)]
    tls = by_name(rows)["TLS connections per 10,000 idle connections"]
    assert (tls["value"], tls["met"]) == (101.25, False)  # 81 for 8,000 is 101 per 10,000
    rows[-1] = r("idle-10k", "hostmesh", "tls_connections", 80)
    assert by_name(rows)["TLS connections per 10,000 idle connections"]["met"]


def test_missing_inputs_are_reported_never_dropped():
    t = by_name([])
    assert all(x["value"] is None and x["met"] is False and x["note"] for x in t.values())
    # a reference that adds nothing (haproxy == direct): no ratio for ping-pong
    rows = [r("pingpong", "direct", "p50_us", 40), r("pingpong", "haproxy", "p50_us", 40),
            r("pingpong", "hostmesh", "p50_us", 50)]
    assert by_name(rows)["pingpong added p50 vs haproxy's"]["value"] is None


def test_pingpong_between_goal_and_floor_says_so():
    rows = [x for x in BASE if not (x["scenario"] == "pingpong" and x["path"] == "hostmesh" and x["metric"] == "p50_us")]
    rows.append(r("pingpong", "hostmesh", "p50_us", 88))  # added 48 vs 40: 1.2
    p50 = by_name(rows)["pingpong added p50 vs haproxy's"]
    assert (p50["met"], p50["note"]) == (False, "within the 1.25 floor for the default")


def test_selection():
    s = Selection.parse("pingpong,http-l7-1000rps", "haproxy,hostmesh")
    assert s.wants("hostmesh", "pingpong") and not s.wants("hostmesh", "bulk-1")
    assert not s.wants("direct", "pingpong") and s.any("haproxy", ("bulk-1", "pingpong"))
    everything = Selection.parse(None, None)
    assert all(everything.wants(p, x) for p in PATHS for x in SCENARIOS)
    with pytest.raises(ValueError, match="unknown scenario bulk-9"):
        Selection.parse("bulk-9", None)
    with pytest.raises(ValueError, match="unknown path hostmesh-native"):
        Selection.parse(None, "hostmesh-native")


def test_merge_replaces_only_what_was_measured_again():
    old = {"machine": {"cpus": 2}, "quick": False, "results": BASE,
           "errors": [{"step": "hostmesh pingpong", "error": "x"}, {"step": "hostmesh-connect restart", "error": "y"}],
           "targets": []}
    new = {"results": [r("pingpong", "hostmesh", "p50_us", 60), r("pingpong", "hostmesh", "p99_us", 100)],
           "errors": []}
    m = merge(old, new)
    pp = [x for x in m["results"] if (x["scenario"], x["path"]) == ("pingpong", "hostmesh")]
    assert sorted(x["value"] for x in pp) == [60, 100]
    assert len(m["results"]) == len(BASE)
    assert m["errors"] == [{"step": "hostmesh-connect restart", "error": "y"}]
    assert m["reruns"] == [["hostmesh pingpong"]]
    assert by_name(m["results"])["pingpong added p50 vs haproxy's"]["value"] == 0.5
    assert m["targets"] == compute(m["results"])
    # once the path that failed to set up is measured, its old set-up error goes
    again = merge(old, {"results": [r("bulk-1", "hostmesh-connect", "gbit_s", 7)], "errors": []})
    assert again["errors"] == [{"step": "hostmesh pingpong", "error": "x"}]
    # a full run merged over it is the run: nothing is listed as measured again after it
    full = merge(m, {"results": [r("pingpong", "hostmesh", "p50_us", 70)], "errors": [], "full": True})
    assert full["reruns"] == [] and merge(full, new)["reruns"] == [["hostmesh pingpong"]]


def test_merge_keeps_the_drift_pairs_of_what_it_did_not_measure_again():
    pair = {"scenario": "bulk-1", "path": "haproxy", "metric": "gbit_s", "before": 4.0, "after": 5.0}
    pp = {"scenario": "pingpong", "path": "haproxy", "metric": "p50_us", "before": 70, "after": 80}
    old = {"results": BASE, "errors": [], "targets": [], "brackets": [pair, pp]}
    new_pp = dict(pp, after=90)
    m = merge(old, {"results": [r("pingpong", "haproxy", "p50_us", 80)], "errors": [], "brackets": [new_pp]})
    assert m["brackets"] == [pair, new_pp]
    # a run without phase 3 (--quick, or older documents) adds none and drops none it did not measure
    assert merge({"results": BASE, "errors": []}, {"results": [], "errors": []})["brackets"] == []
    assert merge(old, {"results": [r("bulk-1", "haproxy", "gbit_s", 4.5)], "errors": []})["brackets"] == [pp]


def test_haproxy_l7_port_is_mode_http_with_the_deny_rule_at_the_server_end():
    cfg = haproxy.server_config([8080, 8081], "10.0.0.1", "10.1.0.2", Path("/c"), {8081: "/admin"})
    f8081 = cfg.split("frontend f8081\n")[1].split("frontend ")[0]
    assert "  mode http\n" in f8081 and "  http-request deny if { path_beg /admin }\n" in f8081
    assert "backend b8081\n  mode http\n  server pod 10.1.0.2:8081\n" in f8081
    f8080 = cfg.split("frontend f8080\n")[1].split("frontend ")[0]
    assert "mode http" not in f8080 and "deny" not in f8080
    # the source end stays TCP for every port (hostmesh's source agent parses no requests)
    assert "mode http" not in haproxy.client_config([8080, 8081], "10.0.0.1", Path("/c"))



@pytest.mark.parametrize("l7", [None, {8081: "/admin"}])
def test_haproxy_plain_is_the_tls_config_without_ssl_on_the_hop(l7):
    """haproxy-plain: the same frontends, backends, ports and capture listener; only the
    ``ssl ...`` parts of the inter-node hop go (and nothing splices)."""
    ports, certs = [5201, 8080, 8081], Path("/c")
    for tls_cfg, plain in (
            (haproxy.client_config(ports, "10.0.0.1", certs), haproxy.client_config(ports, "10.0.0.1", None, tls=False)),
            (haproxy.server_config(ports, "10.0.0.1", "10.1.0.2", certs, l7),
             haproxy.server_config(ports, "10.0.0.1", "10.1.0.2", None, l7, tls=False))):
        assert tls_cfg.count(" ssl ") == 3 and "ssl" not in plain and "splice" not in plain
        assert plain == re.sub(r" ssl .*$", "", tls_cfg, flags=re.M)
    assert "  server n0 10.0.0.1:25201\n" in haproxy.client_config(ports, "10.0.0.1", None, tls=False)
    server = haproxy.server_config(ports, "10.0.0.1", "10.1.0.2", None, l7, tls=False)
    assert "frontend f5201\n  bind 10.0.0.1:25201\n  default_backend b5201\nbackend b5201\n  server pod 10.1.0.2:5201\n" in server


def test_bulk_rows_note_the_plain_ceiling_and_it_never_decides_the_goal():
    plain = [r("bulk-1", "haproxy-plain", "gbit_s", 4.8), r("bulk-4", "haproxy-plain", "gbit_s", 5.0)]
    t = by_name(BASE + plain)
    assert (t["bulk-1 vs haproxy"]["value"], t["bulk-1 vs haproxy"]["met"]) == (1.5, True)
    # a TLS relay above the ceiling of the same run measured the machine's drift: said so
    drift = "; above it, so the machine was faster while hostmesh ran than while the HAProxies did: " \
            "this ratio is not evidence"
    assert t["bulk-1 vs haproxy"]["note"] == "the ceiling for any relay without crypto is 1.20x HAProxy" + drift
    assert (t["bulk-4 vs haproxy"]["value"], t["bulk-4 vs haproxy"]["met"]) == (1.475, False)
    assert t["bulk-4 vs haproxy"]["note"] == "the ceiling for any relay without crypto is 1.25x HAProxy" + drift
    # below the ceiling: the ceiling alone
    high = [r("bulk-1", "haproxy-plain", "gbit_s", 6.4), r("bulk-4", "haproxy-plain", "gbit_s", 5.0)]
    assert by_name(BASE + high)["bulk-1 vs haproxy"]["note"] == \
        "the ceiling for any relay without crypto is 1.60x HAProxy"
    # every other row is as without haproxy-plain; without it the bulk rows carry no note
    assert [x for x in compute(BASE + plain) if not x["name"].startswith("bulk")] == \
        [x for x in compute(BASE) if not x["name"].startswith("bulk")]
    assert "note" not in by_name(BASE)["bulk-1 vs haproxy"]
    # hostmesh not measured: still said so, the ceiling beside it
    rows = [x for x in BASE if x["path"] != "hostmesh"] + plain
    one = by_name(rows)["bulk-1 vs haproxy"]
    assert (one["value"], one["met"], one["note"]) == (
        None, False, "not measured; the ceiling for any relay without crypto is 1.20x HAProxy")
    assert "haproxy-plain" in PATHS and Selection.parse("bulk-1", "haproxy-plain").wants("haproxy-plain", "bulk-1")


def test_report_bulk_prose_gives_the_plain_ceiling():
    from agent.bench.report import _bulk

    rows = BASE + [r("bulk-1", "haproxy-plain", "gbit_s", 4.8), r("bulk-4", "haproxy-plain", "gbit_s", 5.0),
                   r("bulk-1", "haproxy-plain", "cpu_s_per_gib", 1.25), r("bulk-4", "haproxy-plain", "cpu_s_per_gib", 1.3)]
    g = lambda s, p, m: next((x["value"] for x in rows if (x["scenario"], x["path"], x["metric"]) == (s, p, m)), None)  # noqa: E731
    text = _bulk(g)
    assert "(`haproxy-plain`) carry 4.8 / 5 Gbit/s at 1.25 / 1.3 CPU s/GiB: 1.20x / 1.25x the TLS HAProxy" in text
    assert "carry 4.8" not in _bulk(lambda s, p, m: None if p == "haproxy-plain" else g(s, p, m))


PODS = [
    {"name": "srv", "namespace": "bench", "service_account": "srv", "ip": "10.10.0.2", "node": "node-0"},
    {"name": "cli", "namespace": "bench", "service_account": "cli", "ip": "10.10.1.2", "node": "node-1"},
]


def test_ztunnel_local_workloads():
    doc = yaml.safe_load(yaml.safe_dump(ztunnel.local_xds(PODS)))
    assert doc["policies"] == [] and doc["services"] == []
    srv = doc["workloads"][0]
    assert srv == {"uid": "Kubernetes//Pod/bench/srv", "name": "srv", "namespace": "bench", "serviceAccount": "srv",
                   "trustDomain": "cluster.local", "workloadIps": ["10.10.0.2"], "protocol": "HBONE",
                   "node": "node-0", "canonicalName": "srv", "workloadName": "srv", "clusterId": "Kubernetes",
                   "services": {}}
    assert [w["node"] for w in doc["workloads"]] == ["node-0", "node-1"]


def test_ztunnel_environment_is_dedicated_mode_without_istiod():
    env = ztunnel.environment(PODS[1], "node-1", Path("/w/zt.yaml"))
    assert env["PROXY_MODE"] == "dedicated" and env["PROXY_WORKLOAD_INFO"] == "bench/cli/cli"
    assert env["XDS_ADDRESS"] == "" and env["LOCAL_XDS_PATH"] == "/w/zt.yaml" and env["FAKE_CA"] == "true"
    assert env["NODE_NAME"] == "node-1" and env["TRUST_DOMAIN"] == "cluster.local"
    assert all(isinstance(v, str) for v in env.values())


def test_ztunnel_capture_is_redirect_in_its_own_chain():
    rules = ztunnel.capture_rules()
    assert rules[0] == ["iptables", "-t", "nat", "-N", ztunnel.CHAIN]
    # ztunnel's own sockets and loopback stay out; everything else the pod opens goes to :15001
    assert rules[1][-6:] == ["-m", "mark", "--mark", "1337", "-j", "RETURN"]
    assert rules[3][-6:] == ["-p", "tcp", "-j", "REDIRECT", "--to-ports", "15001"]
    assert rules[-1] == ["iptables", "-t", "nat", "-I", "OUTPUT", "-j", ztunnel.CHAIN]
    assert ztunnel.remove_rules()[0] == ["iptables", "-t", "nat", "-D", "OUTPUT", "-j", ztunnel.CHAIN]


def test_ztunnel_binary_checks(tmp_path):
    with pytest.raises(ztunnel.ZtunnelError, match=r"--ztunnel .*/nope: no such file"):
        ztunnel.check_binary(tmp_path / "nope")
    with pytest.raises(ztunnel.ZtunnelError, match="not a file"):
        ztunnel.check_binary(tmp_path)
    f = tmp_path / "ztunnel"
    f.write_text("#!/bin/sh\n")
    f.chmod(0o644)  # no x bit: refused even for root
    with pytest.raises(ztunnel.ZtunnelError, match=r"not executable \(chmod \+x it\)"):
        ztunnel.check_binary(f)
    f.chmod(0o755)
    assert ztunnel.check_binary(f) == f.resolve()
