"""Answers for repeat flows (decisions/0006) in the lab: once node-0 has decided a flow
(client on node-1 -> web on node-0, HBONE), its core answers the flow's next streams
itself, and every one of them is still recorded as a decided one; a DENY applied while
the cache is warm takes effect on the very next connection, and a connection the cache
let in is closed by the policy re-check like any other."""

import time

import pytest

from tests.lab.conftest import lab_up, ns_run, wait_for
from tests.lab.test_hbone_iptables import TOPOLOGY  # web on node-0, client on node-1

DENY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: shop}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/front/sa/client-sa"]}}]
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with lab_up("crepeat", topology=TOPOLOGY, tmp=tmp_path_factory.mktemp("crepeat")) as lab:
        lab.serve_http("web", 8080)
        yield lab


def curl(lab) -> str:
    return ns_run(lab.pod("client")["netns"], "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
                  f"http://{lab.pod('web')['ip']}:8080/").stdout


def engine(lab, node: int) -> dict:
    return lab.admin(node, "GET", "/v1/stats")[1]["engine"]


def inbound(lab) -> list[dict]:
    return [r for r in lab.access_log(0) if r.get("type") == "connection" and r["direction"] == "inbound"
            and r["dst"]["port"] == 8080]


def test_repeat_streams_are_answered_by_the_core_and_recorded_as_decided(lab):
    before, hits = len(inbound(lab)), engine(lab, 0).get("decision_cache_hits", 0)
    assert [curl(lab) for _ in range(6)] == ["200"] * 6
    assert engine(lab, 0).get("decision_cache_hits", 0) - hits >= 5
    wait_for(lambda: len(inbound(lab)) - before == 6)
    recs = inbound(lab)[before:]
    client = lab.pod("client")
    assert len({r["reason"] for r in recs}) == 1  # the first (decided) one's, for all
    for r in recs:
        assert (r["mode"], r["verdict"], r["policy"]) == ("tunnel", "allow", None)
        assert (r["src"]["ip"], r["src"]["principal"], r["src"]["workload"]) == (
            client["ip"], "spiffe://cluster.local/ns/front/sa/client-sa", "client")
        assert (r["dst"]["workload"], r["dst"]["principal"]) == ("web", "spiffe://cluster.local/ns/shop/sa/web-sa")
        assert r["bytes_received"] > 0 and r["trace_id"]
    # HBONE: the source port is the outer connection's (one pooled TLS connection), as decided
    assert len({r["src"]["port"] for r in recs}) == 1
    assert len({r["trace_id"] for r in recs}) == 6


def test_a_deny_takes_effect_on_the_next_connection_with_the_cache_warm(lab):
    assert [curl(lab) for _ in range(3)] == ["200"] * 3
    warm = engine(lab, 0)
    assert warm["decision_cache_entries"] >= 1
    lab.apply(DENY)
    try:
        after = engine(lab, 0)
        assert after["decision_generation"] > warm["decision_generation"]
        assert after["decision_cache_entries"] == 0
        assert curl(lab) == "000"  # refused (401 at node-0, the pod's connection reset)
        assert engine(lab, 0).get("decision_cache_hits", 0) == after.get("decision_cache_hits", 0)
        wait_for(lambda: any(r["verdict"] == "deny" and r["policy"] == "shop/deny-client" for r in inbound(lab)))
    finally:
        lab.clear_policies()
    assert curl(lab) == "200"


def test_a_connection_the_cache_let_in_is_closed_by_a_policy_change(lab):
    assert curl(lab) == "200"  # the flow is stored
    hits = engine(lab, 0).get("decision_cache_hits", 0)
    web = lab.pod("web")["ip"]
    # a connection held open: it reads until the server closes it
    code = (f"import socket, time\ns = socket.create_connection(('{web}', 8080), 5)\ns.settimeout(20)\n"
            "t = time.monotonic()\ntry:\n    s.recv(1)\nexcept OSError:\n    pass\n"
            "print('closed' if time.monotonic() - t < 15 else 'open')")
    p = lab.spawn(lab.pod("client")["netns"], "/usr/bin/env", "python3", "-c", code)
    wait_for(lambda: engine(lab, 0).get("decision_cache_hits", 0) > hits)
    time.sleep(0.3)
    lab.apply(DENY)
    try:
        out, _ = p.communicate(timeout=20)
        assert out.strip() == "closed"
        wait_for(lambda: any(r["reason"] == "policy_changed" for r in inbound(lab)))
    finally:
        lab.clear_policies()
