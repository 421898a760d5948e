"""Answers for repeat tunnel flows (proxy/repeat.py, decisions/0006): what the glue stores
in the core, that a connection the core answered from it is recorded exactly as a
decided one, and that every change that can move a decision bumps the generation (the
core drops its answers on the bump: dataplane/src/decisions.rs tests) before anything
else is decided."""

import yaml

from agent.proxy import repeat
from agent.rbac.loader import load_documents
from tests.unit.test_decision_cost import CLI, SRV, Core, drive, engine

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class RecordingCore(Core):
    def __init__(self):
        super().__init__()
        self.generations = []

    def set_generation(self, g):
        self.generations.append(g)

    def close(self, cid, reason):
        self.calls.append(("close", (cid, reason), {}))
        return True


def dest(node="node-0"):
    a0, e0 = engine(node)
    e0.core = RecordingCore()
    a0.engine = e0
    e0.decisions_changed()
    return a0, e0


def stream(e0, cid, port=40001, traceparent=TP):
    e0._on_conn(cid, "tunnel", ("198.19.1.2", port), ("198.19.0.2", 15008),
                (CLI, ("198.19.0.2", 8080), ("198.19.1.2", port), traceparent, "hbone", None))


def cached(e0, cid, entry, port=40002, at=1795345876.25):
    e0._on_cached(cid, entry, at, ("198.19.1.2", port), ("198.19.0.2", 15008),
                  (CLI, ("198.19.0.2", 8080), ("198.19.1.2", port), TP, "hbone", None), None)


def deny_all(agent):
    doc = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": "deny-cli", "namespace": "bench"},
           "spec": {"action": "DENY", "rules": [{"from": [{"source": {"principals": [CLI]}}]}]}}
    agent.policies.apply(load_documents(yaml.safe_dump(doc), "p.yaml"), "api")


def test_an_allowed_stream_is_stored_and_its_repeat_is_recorded_as_a_decided_one():
    def run():
        a0, e0 = dest()
        stream(e0, 9)
        kind, args, kw = e0.core.calls[-1]
        assert (kind, args) == ("connect", (9, "198.19.0.2", 8080, "198.19.1.2"))
        gen, entry = kw["remember"]
        assert gen == e0._repeat.generation
        before = dict(a0.counters)
        cached(e0, 10, entry)
        moved = {k: a0.counters[k] - before.get(k, 0) for k in a0.counters if a0.counters[k] != before.get(k, 0)}
        e0._on_finished(9, 5, 6, 1795345876.2, 1795345876.5, "eof")
        e0._on_finished(10, 7, 8, 1795345876.25, 1795345876.5, "eof")
        return a0, moved

    a0, moved = drive(run)
    # the repeat moved exactly what the decision moved
    assert moved == {"tunnel_streams_hbone": 1, "policy_decisions_allow": 1, "connections_established": 1}
    first, second = (r.to_json() for r in a0.telemetry.queue)
    for doc in (first, second):
        assert (doc["direction"], doc["mode"], doc["verdict"]) == ("inbound", "tunnel", "allow")
        assert (doc["src"]["principal"], doc["dst"]["principal"], doc["dst"]["workload"]) == (CLI, SRV, "srv")
        assert doc["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert (second["src"]["port"], second["bytes_sent"], second["bytes_received"]) == (40002, 7, 8)
    assert second["start"] == "2026-11-22T11:11:16.250Z"
    assert sum(a0.telemetry.metrics.counters["hostmesh_policy_decisions_total"].values()) == 2


def test_a_denied_stream_is_never_stored():
    def run():
        a0, e0 = dest()
        deny_all(a0)
        stream(e0, 9)
        return e0

    e0 = drive(run)
    kind, args, kw = e0.core.calls[-1]
    assert kind == "refuse" and args[2] == 401 and "remember" not in kw
    assert len(e0._repeat) == 0


def test_every_change_a_decision_reads_bumps_the_generation_at_once():
    def run():
        a0, e0 = dest()
        seen = []

        def step(what, change):
            n = len(e0.core.generations)
            change()
            seen.append((what, e0.core.generations[-1:] == [e0._repeat.generation], len(e0.core.generations) - n))

        step("policy", lambda: deny_all(a0))
        step("traffic", lambda: a0.traffic.replace_source("api", []))
        step("workload", lambda: a0.unregister("bench.cli"))
        step("view", lambda: a0.cluster_changed())
        return seen

    for what, current, bumps in drive(run):
        assert current and bumps >= 1, what


def test_a_repeat_answered_before_a_deny_is_closed_when_it_is_recorded():
    """The core answered from the old generation while Python swapped in a deny: the
    queued repeat is judged under the new policies and closed."""
    def run():
        a0, e0 = dest()
        stream(e0, 9)
        _, entry = e0.core.calls[-1][2]["remember"]
        deny_all(a0)  # bumps: the core's table is empty from here on
        cached(e0, 10, entry)
        conn = e0._live[10]
        return a0, e0, conn

    a0, e0, conn = drive(run)
    assert ("close", (10, "policy_changed"), {}) in e0.core.calls
    assert (conn.verdict, conn.policy) == ("deny", "bench/deny-cli")
    assert a0.counters["decision_cache_rejudged"] == 1


def test_a_change_without_a_hook_is_caught_by_the_world_check():
    def run():
        a0, e0 = dest()
        stream(e0, 9)
        _, entry = e0.core.calls[-1][2]["remember"]
        a0.policies.on_swap.clear()  # a change nobody hooked
        deny_all(a0)
        assert repeat.world(a0) != e0._world
        e0._check_world()  # what run() does before each batch of events
        cached(e0, 10, entry)
        return e0

    e0 = drive(run)
    assert ("close", (10, "policy_changed"), {}) in e0.core.calls


def test_a_forwarded_mismatch_is_judged_every_time():
    def run():
        a0, e0 = dest()
        e0._on_conn(9, "tunnel", ("198.19.1.2", 40001), ("198.19.0.2", 15008),
                    (CLI, ("198.19.0.2", 8080), ("198.19.1.9", 40001), TP, "hbone", None))
        return e0

    e0 = drive(run)
    kind, _, kw = e0.core.calls[-1]
    assert kind == "connect" and kw == {"remember": None}


def test_an_entry_that_was_dropped_closes_its_connection():
    def run():
        a0, e0 = dest()
        cached(e0, 10, 12345)
        return a0, e0

    a0, e0 = drive(run)
    assert e0.core.calls[-1] == ("close", (10, "decision_lost"), {})
    assert a0.counters["decision_cache_lost"] == 1


def test_the_entry_table_is_bounded_oldest_first():
    t = repeat.Table(max_entries=4)
    ids = [t.add(object()) for _ in range(5)]
    assert len(t) <= 4 and t.get(ids[0]) is None and t.get(ids[-1]) is not None


def test_a_captured_connection_to_one_pod_is_stored_and_its_repeat_recorded_with_the_sent_trace():
    def run():
        a1, e1 = dest("node-1")
        e1._on_conn(7, "outbound", ("198.19.1.2", 40001), ("198.19.0.2", 8080), None)
        kind, args, kw = e1.core.calls[-1]
        assert kind == "tunnel" and kw["protocol"] == "hbone"
        gen, entry = kw["remember"]
        assert gen == e1._repeat.generation and e1._repeat.get(entry).route.dst_ip == "198.19.0.2"
        before = dict(a1.counters)
        e1._on_cached(8, entry, 1795345876.25, ("198.19.1.2", 40002), ("198.19.0.2", 8080), None, TP)
        moved = {k: a1.counters[k] - before.get(k, 0) for k in a1.counters if a1.counters[k] != before.get(k, 0)}
        e1._on_finished(7, 5, 6, 1795345876.2, 1795345876.5, "eof")
        e1._on_finished(8, 7, 8, 1795345876.25, 1795345876.5, "eof")
        return a1, moved

    a1, moved = drive(run)
    assert moved == {"connections_opened_outbound": 1, "connections_established": 1}
    first, second = (r.to_json() for r in a1.telemetry.queue)
    for k in ("direction", "mode", "verdict", "dst"):
        assert first[k] == second[k], k
    assert (second["src"]["port"], second["trace_id"]) == (40002, "0af7651916cd43dd8448eb211c80319c")
    assert second["trace_id"] != first["trace_id"]


def test_a_failed_repeat_goes_on_as_a_decided_one_would():
    def run():
        a1, e1 = dest("node-1")
        e1._on_conn(7, "outbound", ("198.19.1.2", 40001), ("198.19.0.2", 8080), None)
        _, entry = e1.core.calls[-1][2]["remember"]
        e1._on_cached(8, entry, 1795345876.25, ("198.19.1.2", 40002), ("198.19.0.2", 8080), None, TP)
        e1._on_failed(8, 401, "tunnel_status_401", "shop/deny")
        return a1, e1

    a1, e1 = drive(run)
    assert e1.core.calls[-1][0] == "refuse" and e1.core.calls[-1][1][0] == 8
    (rec,) = [r.to_json() for r in a1.telemetry.queue]
    assert (rec["verdict"], rec["policy"], rec["src"]["port"]) == ("deny", "shop/deny", 40002)


def test_a_connect_fallback_toward_a_node_drops_its_stored_tunnels():
    def run():
        a1, e1 = dest("node-1")
        e1._on_conn(7, "outbound", ("198.19.1.2", 40001), ("198.19.0.2", 8080), None)
        g = e1._repeat.generation
        e1._on_failed(7, 502, "connect_failed: Connection refused", None)
        kind, args, kw = e1.core.calls[-1]
        return g, e1, kind, kw

    g, e1, kind, kw = drive(run)
    assert e1._repeat.generation > g
    assert kind == "tunnel" and "protocol" not in kw and kw["remember"] is None  # CONNECT for 60 s: not stored
