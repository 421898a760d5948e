"""What makes a new connection cheaper on the decision path must not change what it
decides or records: the glue (native.py) driven with a fake core on both agents, the
per-workload-pair tunnel head cache (tunnel_head.py), one record per reporter for a short
connection (finish.py), the label cache (account.py), the access log's timestamps
(record.rfc3339) and the traceparent entropy blocks (connect.py)."""

import datetime as dt
import json
import re

import pytest
import trio
import yaml
from hypothesis import given
from hypothesis import strategies as st

from agent.app import Agent
from agent.config import parse_config
from agent.proxy import finish as finish_mod
from agent.proxy import tunnel_head
from agent.proxy.connect import new_traceparent
from agent.proxy.native import NativeEngine
from agent.serve import _load_static_state
from agent.state.workloads import workload_from_json
from agent.telemetry import account
from agent.telemetry.istio import LabelContext, tcp_labels
from agent.telemetry.pipeline import Telemetry, label_context
from agent.telemetry.record import ConnRecord, Endpoint, rfc3339

CLI = "spiffe://cluster.local/ns/bench/sa/cli"
SRV = "spiffe://cluster.local/ns/bench/sa/srv"


def pods(node):
    srv = dict(uid="bench.srv", name="srv", namespace="bench", service_account="srv", ip="198.19.0.2",
               labels={"app": "srv"}, http_ports=[8081])
    cli = dict(uid="bench.cli", name="cli", namespace="bench", service_account="cli", ip="198.19.1.2",
               labels={"app": "cli", "version": "v1"})
    if node == "node-1":
        srv["node"] = "node-0"
    else:
        cli["node"] = "node-1"
    return [srv, cli]


def config(node):
    c = {"node": {"name": node, "address": "10.0.0.1" if node == "node-0" else "10.0.0.2"},
         "cluster": {"name": "lab", "pod_cidrs": ["198.19.0.0/24" if node == "node-0" else "198.19.1.0/24"],
                     "nodes": [{"name": "node-0", "address": "10.0.0.1", "pod_cidrs": ["198.19.0.0/24"]},
                               {"name": "node-1", "address": "10.0.0.2", "pod_cidrs": ["198.19.1.0/24"]}]},
         "workloads": pods(node), "telemetry": {"access_log": "off"}}
    return parse_config(yaml.safe_dump(c))


class Core:
    """Records the commands the glue gives."""

    def __init__(self):
        self.calls = []

    def tunnel(self, *a, **k):
        self.calls.append(("tunnel", a, k))
        return True

    def connect(self, *a, **k):
        self.calls.append(("connect", a, k))
        return True

    def refuse(self, *a, **k):
        self.calls.append(("refuse", a, k))
        return True

    def set_pod_identities(self, pairs):
        pass

    def set_generation(self, g):
        pass

    def connections(self):
        return []


class Svid:
    def get(self, *key):
        return self


def engine(node):
    agent = Agent(config(node))
    _load_static_state(agent)
    agent.telemetry = Telemetry(agent.config.telemetry, node, label_context(agent.config))
    agent.identities = Svid()
    eng = NativeEngine(agent, Core(), None)
    eng.ids.pushed = lambda sid: agent.identities
    return agent, eng


def counter(agent, name):
    return sum(agent.telemetry.metrics.counters.get(name, {}).values())


def drive(fn):
    out = []

    async def main():
        out.append(fn())

    trio.run(main)
    return out[0]


def test_a_short_tunnelled_connection_costs_one_record_per_side_and_counts_as_before(monkeypatch):
    built = []
    real = finish_mod.record
    monkeypatch.setattr(finish_mod, "record", lambda *a: built.append(a[2]) or real(*a))

    def run():
        a1, e1 = engine("node-1")
        a0, e0 = engine("node-0")
        e1._on_conn(7, "outbound", ("198.19.1.2", 40001), ("198.19.0.2", 8080), None)
        kind, args, kw = e1.core.calls[-1]
        assert kind == "tunnel" and kw == {"protocol": "hbone", "bind": "198.19.1.2", "remember": (1, 1)}
        assert args[:7] == (7, "198.19.0.2", 15008, CLI, SRV, args[5], "198.19.0.2:8080")
        headers = dict(args[7])
        assert headers["forwarded"] == 'for="198.19.1.2:40001"'
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", headers["traceparent"])
        assert headers["baggage"] == ("k8s.cluster.name=lab,k8s.namespace.name=bench,k8s.pod.name=cli,"
                                      "service.name=cli,service.version=v1")
        e0._on_conn(9, "tunnel", ("198.19.1.2", 40001), ("198.19.0.2", 15008),
                    (CLI, ("198.19.0.2", 8080), ("198.19.1.2", 40001), headers["traceparent"], "hbone",
                     headers["baggage"]))
        # allowed plainly: also stored in the core for the flow's repeats (test_repeat_flows.py)
        assert e0.core.calls[-1][:2] == ("connect", (9, "198.19.0.2", 8080, "198.19.1.2"))
        assert e0.core.calls[-1][2]["remember"][0] == e0._repeat.generation
        e1._on_finished(7, 79, 1073, 1795345876.25, 1795345876.5, "eof")
        e0._on_finished(9, 79, 1073, 1795345876.25, 1795345876.5, "eof")
        return a1, a0

    a1, a0 = drive(run)
    assert built == ["outbound", "inbound"]  # one record per reporter, never one more to open it
    for agent, reporter in ((a1, "source"), (a0, "destination")):
        tel = agent.telemetry
        assert counter(agent, "istio_tcp_connections_opened_total") == 1
        assert counter(agent, "istio_tcp_connections_closed_total") == 1
        assert counter(agent, "istio_tcp_received_bytes_total") == 79
        assert counter(agent, "istio_tcp_sent_bytes_total") == 1073
        assert sum(tel.metrics.gauges["istio_tcp_sockets_open"].values()) == 0
        (labels,) = tel.metrics.counters["istio_tcp_connections_opened_total"]
        assert labels[0] == reporter and labels[-5] == "mutual_tls"
        (rec,) = tel.queue
        doc = rec.to_json()
        assert (doc["bytes_sent"], doc["bytes_received"], doc["reason"], doc["verdict"]) == (79, 1073, "eof", "allow")
        assert (doc["src"]["principal"], doc["dst"]["principal"]) == (CLI, SRV)
        assert len(agent.conns) == 0


def test_tunnel_heads_follow_the_workload_objects_never_a_stale_entry():
    def w(labels, sa="cli"):
        return workload_from_json(dict(uid="bench.cli", name="cli", namespace="bench", service_account=sa,
                                       ip="198.19.1.2", labels=labels))

    src, dst = w({"app": "cli"}), w({"app": "srv"}, sa="srv")
    heads = tunnel_head.Heads(max_entries=2)
    h = heads.get(src, dst, "cluster.local", "lab")
    assert heads.get(src, dst, "cluster.local", "lab") is h
    assert (h.src_id, h.dst_id) == (CLI, SRV)
    assert h == tunnel_head.derive(src, dst, "cluster.local", "lab")
    again = w({"app": "cli", "version": "v2"})  # re-registered with new labels: a new object
    assert heads.get(again, dst, "cluster.local", "lab").baggage.endswith("service.version=v2")
    assert heads.get(src, dst, "example.org", "lab").src_id == "spiffe://example.org/ns/bench/sa/cli"
    assert heads.get(src, dst, "cluster.local", None).baggage.startswith("k8s.namespace.name=bench")
    assert len(heads) <= 2


def test_cached_tcp_labels_are_tcp_labels_and_tell_workloads_apart():
    ctx = LabelContext(local_node="node-0")

    def rec(labels, direction="outbound"):
        ep = Endpoint("198.19.1.2", 40000, "cli", "bench", CLI, labels=labels)
        dst = Endpoint("198.19.0.2", 8080, "srv", "bench", SRV, labels={"app": "srv"})
        return ConnRecord(1.0, 2.0, "node-0", direction, "tunnel", ep, dst, 1, 2, "allow", None, None, None)

    v1, v2 = {"app": "cli", "version": "v1"}, {"app": "cli", "version": "v2"}
    for r in (rec(v1), rec(v2), rec(v1, "inbound"), rec(None)):
        assert account.cached_tcp_labels(r, ctx) == tcp_labels(r, ctx)
    assert account.cached_tcp_labels(rec(v1), ctx) != account.cached_tcp_labels(rec(v2), ctx)


def _reference(t):
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.mark.parametrize("t", [0.0, 1795345876.25, 1795345876.9995, 1795345876.9999996, 1795345877.0004999,
                               1e9 + 0.001, 4102444799.999])
def test_rfc3339_writes_what_datetime_writes(t):
    assert rfc3339(t) == _reference(t)


@given(st.floats(0, 4.1e9, allow_nan=False, allow_infinity=False))
def test_rfc3339_matches_datetime_everywhere(t):
    assert rfc3339(t) == _reference(t)


def test_rfc3339_reuses_the_second_only_while_it_lasts():
    assert rfc3339(1795345876.5) == "2026-11-22T11:11:16.500Z"
    assert rfc3339(1795345877.5) == "2026-11-22T11:11:17.500Z"
    assert rfc3339(1795345876.001) == "2026-11-22T11:11:16.001Z"


def test_traceparents_stay_distinct_across_entropy_blocks():
    seen = {new_traceparent()[0] for _ in range(3 * 256 + 5)}
    assert len(seen) == 3 * 256 + 5
    assert all(re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", t) for t in seen)
    assert new_traceparent(bytes(range(24)))[0] == "00-000102030405060708090a0b0c0d0e0f-1011121314151617-01"


def test_access_log_lines_are_compact_json():
    tel = Telemetry(parse_config("{}").telemetry, "n")

    class Log(list):
        def write(self, s):
            self.append(s)

        def flush(self):
            pass

    tel._log = Log()
    r = ConnRecord(1.0, 2.0, "n", "outbound", "tunnel", Endpoint("a", 1), Endpoint("b", 2), 1, 2, "allow", None,
                   None, None)
    tel.queue.append(r)
    tel.flush()
    (line,) = tel._log
    assert line == json.dumps(r.to_json(), separators=(",", ":")) + "\n"
