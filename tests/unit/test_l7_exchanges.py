"""The core's finished L7 exchanges taken in batches (agent/proxy/l7core.py
on_exchanges, native_http._on_exchanges, take_records): a batch over several
connections gives exactly the counts and records of one call per exchange, in order; an
exchange of a gone connection is dropped; one that fails ends its connection only; and
what the core still holds at shutdown is recorded."""

from __future__ import annotations

import dataclasses

from agent.proxy.l7core import on_exchange, on_exchanges, on_request
from agent.proxy.native_http import HttpPaths
from tests.unit.test_l7core import DENY_ADMIN, FakeAgent, FakeCore, H, l7

TOLD = ("GET", "http://web:81/a/./b?q", "other")


def _setup():
    """Connection 1 policed (one asked head, memo 1), 2 told, 3 observed only."""
    agent, core = FakeAgent(DENY_ADMIN), FakeCore()
    conns = {1: l7(), 2: l7(police=False, told=True), 3: l7(police=False)}
    on_request(agent, core, 1, conns[1], 1, "GET", "/1k", "HTTP/1.1", H)
    on_request(agent, core, 3, conns[3], 1, "GET", "/x", "HTTP/1.1", H)
    return agent, conns


BATCH = [
    (1, 1, 200, 50, 1100, 1.0, 1.001, "-", 0, None),  # the asked head
    (2, 1, 200, 10, 20, 1.0, 1.002, "-", 0, TOLD),
    (1, 2, 200, 50, 1100, 1.1, 1.101, "-", 1, None),  # reused
    (3, 1, 404, 7, 9, 1.2, 1.3, "DC", 0, None),
    (9, 1, 200, 1, 1, 1.0, 1.0, "-", 0, None),  # its connection is gone
    (1, 3, 413, 50, 80, 1.3, 1.4, "DPE", 1, None),  # the core refused its body
    (2, 2, 200, 10, 20, 1.4, 1.5, "-", 0, TOLD),
]


def _seen(agent):
    recs = [tuple(getattr(r, f.name) for f in dataclasses.fields(r)) for r in agent.telemetry.records]
    return dict(agent.counters), dict(agent.telemetry.series), recs


def test_a_batch_counts_and_records_exactly_as_one_call_per_exchange():
    one, conns = _setup()
    for cid, *rest in BATCH:
        if cid in conns:
            on_exchange(one, conns[cid], *rest)
    batch, conns = _setup()
    assert on_exchanges(batch, conns, BATCH) == []
    assert _seen(batch) == _seen(one)
    counters, series, recs = _seen(batch)
    assert counters["http_requests_allow"] == 3 and counters["policy_decisions_allow"] == 3
    assert counters["http_refused_413"] == 1
    assert series[("hostmesh_policy_decisions_total", ("allow", "-"))] == 3
    assert [(r[5], r[6], r[8], r[12], r[16]) for r in recs] == [
        ("GET", "/1k", 200, "inbound", "-"), ("GET", "/a/b", 200, "outbound", "-"),
        ("GET", "/1k", 200, "inbound", "-"), ("GET", "/x", 404, "inbound", "DC"),
        ("GET", "/1k", 413, "inbound", "DPE"), ("GET", "/a/b", 200, "outbound", "-")]
    # one connection's ends are made once and shared by its records
    assert recs[0][3] is not None and batch.telemetry.records[0].src is batch.telemetry.records[2].src


def test_a_failing_exchange_ends_its_connection_only():
    agent, conns = _setup()
    bad = (1, 9, 200, 1, 1, 1.0, 1.0, "-", 7, None)  # a token the connection never gave
    failed = on_exchanges(agent, conns, [bad, *BATCH[1:2]])
    assert [(cid, type(e)) for cid, e in failed] == [(1, IndexError)]
    assert [r.direction for r in agent.telemetry.records] == ["outbound"]


class _Core:
    def __init__(self, batches) -> None:
        self.batches, self.refused = list(batches), []

    def events(self):
        return self.batches.pop(0) if self.batches else []

    def refuse(self, cid, reason, status, policy=None):
        self.refused.append((cid, reason, status))


class _Engine(HttpPaths):
    def __init__(self, agent, core, conns) -> None:
        self.agent, self.core, self._http = agent, core, conns
        self.finished = []

    def _on_finished(self, cid, *rest):
        self.finished.append(cid)
        self._http.pop(cid, None)


def test_a_failed_exchange_in_a_batch_refuses_its_connection():
    agent, conns = _setup()
    eng = _Engine(agent, _Core([]), conns)
    eng._on_exchanges([(1, 9, 200, 1, 1, 1.0, 1.0, "-", 7, None), BATCH[1]])
    assert eng.core.refused == [(1, "internal_error", 503)]
    assert len(agent.telemetry.records) == 1


def test_what_the_core_holds_at_shutdown_is_recorded_and_decisions_are_not_made():
    agent, conns = _setup()
    core = _Core([[("exchanges", BATCH[:2]), ("conn", 5, "outbound", ("10.1.0.9", 1), ("10.1.0.5", 80), None),
                   ("finished", 2, 1, 1, 1.0, 1.0, "eof")],
                  [("exchanges", BATCH[2:3])]])
    eng = _Engine(agent, core, conns)
    eng.take_records()
    assert eng.finished == [2] and core.batches == []
    assert [(r.path, r.direction) for r in agent.telemetry.records] == [
        ("/1k", "inbound"), ("/a/b", "outbound"), ("/1k", "inbound")]


def test_records_carry_the_connections_trace_id_as_it_is_now():
    """The trace id is formatted once per connection and follows a change of it."""
    agent, conns = _setup()
    conn = conns[1].conn
    conn.set_trace("ab" * 16, "cd" * 8, parent=True)
    on_exchanges(agent, conns, [BATCH[0], BATCH[2]])
    conn.set_trace("ef" * 16, "01" * 8, parent=True)
    on_exchanges(agent, conns, [(1, 4, 200, 50, 1100, 1.5, 1.6, "-", 1, None)])
    assert [r.trace_id for r in agent.telemetry.records] == ["ab" * 16, "ab" * 16, "ef" * 16]
