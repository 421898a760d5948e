"""The traffic planner and outlier detector (agent.traffic.planner, outlier): tables
with injected time and a seeded random source."""

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from agent.traffic.loader import load_traffic
from agent.traffic.model import OutlierDetection
from agent.traffic.outlier import Detector
from agent.traffic.planner import EndpointMeta, NoPick, Pick, TrafficState, plan_service
from agent.traffic.store import TrafficStore


@dataclass
class Svc:
    name: str
    namespace: str
    endpoints: tuple
    target_port: int | None = 8080


EPS = {  # ip -> (labels, region, zone)
    "10.0.0.1": ({"app": "web", "version": "v1"}, "eu", "eu-a"),
    "10.0.0.2": ({"app": "web", "version": "v1"}, "eu", "eu-b"),
    "10.0.0.3": ({"app": "web", "version": "v2"}, "us", "us-a"),
    "10.0.0.4": ({"app": "web", "version": "v2"}, "us", "us-b"),
}
WEB = Svc("web", "shop", tuple(EPS))
SERVICES = {("shop", "web"): WEB}


def meta(ip):
    lb, r, z = EPS[ip]
    return EndpointMeta(lb, r, z)


def store(text):
    s = TrafficStore()
    s.apply(load_traffic(text, "t.yaml"), "t.yaml")
    return s


def doc(kind, spec, name="web", ns="shop"):
    import json

    return json.dumps({"apiVersion": "networking.istio.io/v1", "kind": kind,
                       "metadata": {"name": name, "namespace": ns}, "spec": spec})


SUBSETS = [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]


def plan(st, state=None, now=0.0, rng=None, locality=("eu", "eu-a"), svc=WEB):
    return plan_service(st, {(svc.namespace, svc.name): svc}, svc, 80, client_ns="shop", client_locality=locality, meta=meta,
                        state=state or TrafficState(), now=now, rng=rng or random.Random(7))


def test_weighted_split_and_subsets():
    st = store("[" + doc("DestinationRule", {"host": "web", "subsets": SUBSETS}) + "," + doc("VirtualService", {
        "hosts": ["web"], "tcp": [{"route": [{"destination": {"host": "web", "subset": "v1"}, "weight": 90},
                                             {"destination": {"host": "web", "subset": "v2"}, "weight": 10}]}]}) + "]")
    rng, state = random.Random(1), TrafficState()
    picks = [plan(st, state, rng=rng) for _ in range(10_000)]
    by_subset = Counter(p.subset for p in picks)
    assert 8850 <= by_subset["v1"] <= 9150
    assert {p.endpoints[0] for p in picks if p.subset == "v1"} == {"10.0.0.1", "10.0.0.2"}
    assert {p.endpoints[0] for p in picks if p.subset == "v2"} == {"10.0.0.3", "10.0.0.4"}
    assert picks[0].port == 8080 and picks[0].cluster.startswith("outbound|80|")


def test_round_robin_random_and_least_request():
    rr = store(doc("DestinationRule", {"host": "web", "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}))
    state = TrafficState()
    assert [plan(rr, state).endpoints[0] for _ in range(5)] == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4",
                                                                "10.0.0.1"]
    lr = store(doc("DestinationRule", {"host": "web", "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}}))
    state = TrafficState()
    for ep, n in {"10.0.0.1": 5, "10.0.0.2": 5, "10.0.0.3": 5}.items():
        state.active[ep] = n
    # power of two choices: the idle endpoint wins whenever it is one of the two drawn
    firsts = Counter(plan(lr, state, rng=random.Random(i)).endpoints[0] for i in range(400))
    assert firsts["10.0.0.4"] >= 180 and firsts["10.0.0.4"] == max(firsts.values())
    rnd = store(doc("DestinationRule", {"host": "web", "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}))
    assert len(Counter(plan(rnd, rng=random.Random(i)).endpoints[0] for i in range(100))) == 4


def test_retry_order_never_repeats_and_is_bounded():
    p = plan(store(doc("DestinationRule", {"host": "web"})))
    assert len(p.endpoints) == 3 and len(set(p.endpoints)) == 3


def test_max_connections_refuses_at_once_with_uo():
    st = store(doc("DestinationRule", {"host": "web", "trafficPolicy": {"connectionPool": {"tcp": {
        "maxConnections": 2, "connectTimeout": "250ms"}}}}))
    state = TrafficState()
    for _ in range(2):
        p = plan(st, state)
        assert isinstance(p, Pick) and p.connect_timeout_s == 0.25
        state.acquire(p.cluster, p.endpoints[0])
    third = plan(st, state)
    assert isinstance(third, NoPick) and third.flag == "UO" and "maxConnections 2" in third.reason
    assert state.overflow[third.cluster] == 1
    state.release(p.cluster, p.endpoints[0])
    assert isinstance(plan(st, state), Pick)


def test_no_route_for_unknown_subset_or_port():
    st = store(doc("VirtualService", {"hosts": ["web"], "tcp": [
        {"match": [{"port": 81}], "route": [{"destination": {"host": "web"}}]}]}))
    assert plan(st).flag == "NR"
    st = store(doc("VirtualService", {"hosts": ["web"], "tcp": [{"route": [{"destination": {"host": "web",
                                                                                            "subset": "v9"}}]}]}))
    p = plan(st)
    assert p.flag == "NR" and "subset 'v9'" in p.reason


def test_locality_prefers_zone_then_region_then_failover():
    st = store(doc("DestinationRule", {"host": "web", "trafficPolicy": {
        "loadBalancer": {"simple": "ROUND_ROBIN", "localityLbSetting": {"enabled": True,
                                                                        "failover": [{"from": "eu", "to": "us"}]}},
        "outlierDetection": {"consecutiveGatewayErrors": 1, "baseEjectionTime": "10s", "maxEjectionPercent": 100}}}))
    state = TrafficState()
    assert {plan(st, state).endpoints[0] for _ in range(4)} == {"10.0.0.1"}
    p = plan(st, state)
    assert p.endpoints == ("10.0.0.1", "10.0.0.2", "10.0.0.3")  # retries: same region, then the failover one
    state.report(p.cluster, "10.0.0.1", "connect_failure", 1.0)
    assert {plan(st, state, now=2.0).endpoints[0] for _ in range(4)} == {"10.0.0.2"}
    state.report(p.cluster, "10.0.0.2", "connect_failure", 2.0)
    assert {plan(st, state, now=3.0).endpoints[0] for _ in range(4)} == {"10.0.0.3", "10.0.0.4"}
    assert plan(st, state, now=11.0).endpoints[0] == "10.0.0.1"  # back after baseEjectionTime


def test_every_endpoint_ejected_is_uh():
    one = Svc("web", "shop", ("10.0.0.1",))
    st = store(doc("DestinationRule", {"host": "web", "trafficPolicy": {"outlierDetection": {
        "consecutiveGatewayErrors": 1}}}))
    state = TrafficState()
    p = plan(st, state, svc=one)
    state.report(p.cluster, "10.0.0.1", "connect_failure", 0.0)
    assert plan(st, state, now=1.0, svc=one).flag == "UH"


CFG = OutlierDetection(consecutive_5xx=3, consecutive_gateway=None, interval_s=10, base_ejection_s=30,
                       max_ejection_percent=50)


@pytest.mark.parametrize("events, ejected_at_end", [
    # (time, endpoint, outcome) ...
    ([(0, "a", "connect_failure"), (1, "a", "connect_failure")], set()),
    ([(0, "a", "connect_failure"), (1, "a", "connect_failure"), (2, "a", "connect_failure")], {"a"}),
    ([(0, "a", "connect_failure"), (1, "a", "success"), (2, "a", "connect_failure"), (3, "a", "connect_failure")],
     set()),
    ([(0, "a", 503), (1, "a", 500), (2, "a", 502)], {"a"}),  # 5xx counts every 5xx
    ([(0, "a", 503), (1, "a", 200), (2, "a", 503), (3, "a", 503)], set()),
    # at most 50 % of 4 endpoints: the third one stays in
    ([(t, ep, "reset") for ep in "abc" for t in range(3)], {"a", "b"}),
])
def test_detector_table(events, ejected_at_end):
    d = Detector(CFG)
    for t, ep, outcome in events:
        d.report(ep, outcome, t, cluster_size=4)
    assert {ep for ep, _ in d.ejected(5.0)} == ejected_at_end


def test_ejection_time_grows_with_each_ejection_and_decays():
    d = Detector(CFG)
    times = []
    t = 0.0
    for _ in range(3):
        for _ in range(3):
            ej = d.report("a", "connect_failure", t, 4)
        times.append(ej.until - t)
        t = ej.until  # fails again as soon as it is back
    assert times == [30, 60, 90]
    assert not d.is_ejected("a", t)
    # 5 intervals un-ejected take the count from 3 down to 0: the next ejection is base again
    t += 50
    for _ in range(3):
        ej = d.report("a", "connect_failure", t, 4)
    assert ej.until - t == 30 and ej.times == 1


def test_split_local_origin_counts_only_local_failures():
    d = Detector(OutlierDetection(consecutive_5xx=None, consecutive_local_origin=2, split_local_origin=True))
    d.report("a", 503, 0, 2)
    d.report("a", 503, 0, 2)
    assert not d.is_ejected("a", 1)
    d.report("a", "timeout", 1, 2)
    ej = d.report("a", "connect_failure", 2, 2)
    assert ej.reason == "consecutive_local_origin_failures" and d.is_ejected("a", 3)


def test_gateway_errors_threshold():
    d = Detector(OutlierDetection(consecutive_5xx=None, consecutive_gateway=2))
    d.report("a", 500, 0, 10)
    d.report("a", 504, 0, 10)
    assert not d.is_ejected("a", 0)  # 500 is not a gateway error: the run restarted at 504
    assert d.report("a", 502, 0, 10).reason == "consecutive_gateway_errors"
