"""Python's half of the core's HTTP path (agent/proxy/l7core.py) against a fake core: a
plain allow goes out with a memo, a reused decision is counted and recorded at its
exchange exactly as an asked one, denials and header-reading policies are never
memoized, and a told head's exchange makes its record from what rides on it."""

from __future__ import annotations

import time
from types import SimpleNamespace

from agent.proxy.conns import Conn
from agent.proxy.l7core import L7Conn, on_exchange, on_request
from agent.rbac.loader import load_documents
from agent.rbac.store import PolicyStore
from agent.state.workloads import workload_from_json
from tests.unit.test_rbac_evaluate import pol

DENY_ADMIN = pol("no-admin", "shop", "action: DENY\nrules: [{to: [{operation: {paths: ['/admin*']}}]}]")
READS_HEADER = pol("no-bob", "shop", "action: DENY\nrules: [{when: [{key: 'request.headers[x-user]', values: [bob]}]}]")
WEB = workload_from_json({"uid": "u1", "name": "web", "namespace": "shop", "ip": "10.1.0.5",
                          "labels": {"app": "web"}, "http_ports": [8080]})


class Recorded:
    def __init__(self) -> None:
        self.records, self.series = [], {}
        self.metrics = SimpleNamespace(inc=lambda name, labels, v=1: self.series.__setitem__(
            (name, labels), self.series.get((name, labels), 0) + v))

    def submit(self, rec) -> None:
        self.records.append(rec)

    def submit_requests(self, recs) -> None:
        self.records.extend(recs)


class FakeAgent:
    def __init__(self, *docs: str) -> None:
        self.policies = PolicyStore("istio-system")
        for i, d in enumerate(docs):
            self.policies.apply(load_documents(d, f"p{i}.yaml", "istio-system"), f"p{i}.yaml")
        self.counters: dict[str, int] = {}
        self.telemetry = Recorded()
        self.config = SimpleNamespace(node=SimpleNamespace(name="node-0"), cluster=SimpleNamespace(domain="cluster.local"))
        self.view = SimpleNamespace(services={})

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n


class FakeCore:
    def __init__(self) -> None:
        self.answers = []

    def http_answer(self, cid, rid, verdict, status=0, body=None, target=None, host=None, policy=None, memo=None):
        self.answers.append((rid, verdict, status, target, policy, memo))


def l7(police=True, told=False) -> L7Conn:
    c = Conn("inbound", "tunnel", "10.1.0.9", 40000, WEB.ip, 8080, time.time(), time.monotonic(), dst=WEB,
             src_principal="spiffe://cluster.local/ns/front/sa/client", enforced_here=True)
    return L7Conn(c, police, ["outbound" if told else "inbound"], told=told)


H = [(b"host", b"web"), (b"user-agent", b"hey")]


def test_a_plain_allow_is_memoized_and_its_reuse_counted_and_recorded_as_asked():
    agent, core, h = FakeAgent(DENY_ADMIN), FakeCore(), l7()
    on_request(agent, core, 1, h, 1, "GET", "/x/../1k", "HTTP/1.1", H)
    assert core.answers == [(1, "allow", 0, "/1k", None, (1, agent.policies.generation))]
    on_exchange(agent, h, 1, 200, 50, 1100, 1.0, 1.001, "-")
    asked = dict(agent.counters)
    # the core carried decision 1 out for rid 2 and 3 without an event: the same counts
    for rid in (2, 3):
        on_exchange(agent, h, rid, 200, 50, 1100, 1.0, 1.001, "-", memo=1)
    assert agent.counters == {k: 3 * v for k, v in asked.items()}
    assert agent.counters["http_requests_allow"] == 3 and agent.counters["policy_decisions_allow"] == 3
    assert agent.telemetry.series[("hostmesh_policy_decisions_total", ("allow", "-"))] == 3
    recs = agent.telemetry.records
    assert [(r.method, r.path, r.host, r.status, r.verdict, r.direction) for r in recs] == \
        [("GET", "/1k", "web", 200, "allow", "inbound")] * 3


def test_denials_and_header_reading_policies_are_always_asked():
    agent, core, h = FakeAgent(DENY_ADMIN), FakeCore(), l7()
    on_request(agent, core, 1, h, 1, "GET", "/admin/x", "HTTP/1.1", H)
    assert core.answers[-1][1:] == ("deny", 403, None, "shop/no-admin", None)
    on_request(agent, core, 1, h, 2, "get", "/a", "HTTP/1.1", H)
    assert core.answers[-1][1:3] == ("bad", 400) and core.answers[-1][5] is None
    agent = FakeAgent(DENY_ADMIN, READS_HEADER)
    on_request(agent, core, 1, h, 3, "GET", "/a", "HTTP/1.1", H)
    assert core.answers[-1][1] == "allow" and core.answers[-1][5] is None


def test_an_observed_only_connection_memoizes_every_allow():
    agent, core, h = FakeAgent(), FakeCore(), l7(police=False)
    on_request(agent, core, 1, h, 1, "GET", "/a", "HTTP/1.1", H)
    assert core.answers[-1][5] == (1, agent.policies.generation)
    on_exchange(agent, h, 2, 200, 1, 1, 1.0, 1.0, "-", memo=1)
    assert agent.counters == {} and len(agent.telemetry.records) == 1


def test_a_told_exchange_is_recorded_from_what_rides_on_it():
    agent, h = FakeAgent(), l7(police=False, told=True)
    for _ in range(2):
        on_exchange(agent, h, 1, 200, 10, 20, 1.0, 1.002, "-", told=("GET", "http://web:81/a/./b?q", "other"))
    on_exchange(agent, h, 2, 404, 10, 20, 1.0, 1.002, "-", told=("GET", "/%zz", "web"))
    recs = agent.telemetry.records
    assert [(r.method, r.path, r.host, r.status, r.direction) for r in recs] == [
        ("GET", "/a/b", "web:81", 200, "outbound"), ("GET", "/a/b", "web:81", 200, "outbound"),
        ("-", "-", "", 404, "outbound")]
