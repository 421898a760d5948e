"""Per-request routing, retry decisions and the retry budget (agent.traffic.http), and
the traffic rules through the routing planner and the agent's apply path."""

import pytest
import trio

from agent.app import Agent
from agent.config import parse_config
from agent.errors import ApiError
from agent.proxy.plan import EndpointHealth, HttpRouted, Refuse, Route, plan_outbound
from agent.state.workloads import workload_from_json
from agent.traffic.http import RetryBudget, match_route, retriable
from agent.traffic.loader import load_traffic
from agent.traffic.model import Retries

VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: shop}
spec:
  hosts: [api]
  http:
    - name: canary
      match: [{uri: {prefix: /v2/}, headers: {x-canary: {exact: "yes"}}}, {uri: {exact: /beta}, port: 8080}]
      route: [{destination: {host: api, subset: v2}}]
    - name: get-only
      match: [{method: {exact: GET}, uri: {prefix: /v2/}}]
      route: [{destination: {host: api, subset: v1}}]
    - name: default
      route: [{destination: {host: api}}]
"""


@pytest.mark.parametrize("method, path, headers, port, route", [
    ("GET", "/v2/x", {"x-canary": "yes"}, 80, "canary"),
    ("GET", "/v2/x", {"x-canary": "no"}, 80, "get-only"),
    ("POST", "/v2/x", {}, 80, "default"),
    ("GET", "/beta", {}, 8080, "canary"),
    ("GET", "/beta", {}, 80, "default"),
    ("GET", "/beta/x", {}, 8080, "default"),  # exact is exact
])
def test_first_matching_route_wins(method, path, headers, port, route):
    vs = load_traffic(VS, "vs.yaml")[0].doc
    assert match_route(vs, method, path, headers, port).name == route


def test_no_route_when_nothing_matches():
    vs = load_traffic(VS.split("    - name: default")[0], "vs.yaml")[0].doc
    assert match_route(vs, "POST", "/v1", {}, 80) is None


@pytest.mark.parametrize("retry_on, outcome, expect", [
    ({"503"}, 503, True),
    ({"503"}, 502, False),
    ({"5xx"}, 500, True),
    ({"gateway-error"}, 504, True),
    ({"gateway-error"}, 500, False),
    ({"connect-failure"}, "connect-failure", True),
    ({"503"}, "connect-failure", False),
    ({"refused-stream"}, "reset", True),
    ({"5xx"}, "reset", True),
    ({"connect-failure"}, 200, False),
])
def test_retry_on(retry_on, outcome, expect):
    assert retriable(Retries(2, None, frozenset(retry_on)), outcome) is expect
    assert retriable(None, outcome) is False


def test_budget_allows_a_fraction_of_live_requests_with_a_floor():
    b = RetryBudget()
    b.requests = 10  # 20 % of 10 = 2 < floor 3
    assert [b.allow_retry() for _ in range(4)] == [True, True, True, False]
    b.requests = 50  # 20 % of 50 = 10
    assert sum(b.allow_retry() for _ in range(20)) == 7 and b.retries == 10 and b.exhausted == 14
    b.done_retry()
    assert b.allow_retry()


CONFIG = """
node: {name: node-0, address: 198.18.0.1, labels: {topology.kubernetes.io/zone: za}}
state_dir: /nonexistent-hostmesh-test
capture: {enabled: false}
cluster:
  nodes: [{name: node-1, address: 198.18.0.2, pod_cidrs: [198.19.1.0/24]}]
  services:
    - {name: web, namespace: shop, vip: 198.20.0.10, ports: [80], target_port: 8080,
       endpoints: [198.19.0.3, 198.19.1.2]}
    - {name: api, namespace: shop, vip: 198.20.0.11, ports: [80], endpoints: [198.19.0.3]}
"""
DR = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 1, connectTimeout: 1s}}}
  subsets: [{name: v1, labels: {version: v1}}]
"""
POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: shop}
spec: {}
"""


@pytest.fixture
def agent():
    a = Agent(parse_config(CONFIG))
    for body in [{"uid": "c", "name": "c", "namespace": "front", "ip": "198.19.0.2"},
                 {"uid": "w1", "name": "w1", "namespace": "shop", "ip": "198.19.0.3", "labels": {"version": "v1"}},
                 {"uid": "w2", "name": "w2", "namespace": "shop", "ip": "198.19.1.2", "node": "node-1",
                  "labels": {"version": "v2"}}]:
        a.register(workload_from_json(body, local_node="node-0"))
    return a


async def test_apply_plans_and_refuses_overflow_with_uo(agent):
    out = await agent.apply_policies(DR, "dr.yaml")
    assert out["applied"] == ["shop/web"]
    health = agent.health
    first = plan_outbound("198.19.0.2", "198.20.0.10", 80, agent.view, health, 0.0)
    assert isinstance(first[0], Route) and first[0].cluster == "outbound|80||web.shop.svc.cluster.local"
    assert first[0].connect_timeout_s == 1.0 and first[0].dst_port == 8080
    health.traffic.acquire(first[0].cluster, first[0].dst_ip)
    second = plan_outbound("198.19.0.2", "198.20.0.10", 80, agent.view, health, 0.0)
    assert isinstance(second[0], Refuse) and second[0].flag == "UO"
    dump = agent.traffic_dump()
    assert dump["rules"][0]["host"] == "shop/web" and dump["clusters"][first[0].cluster]["overflow"] == 1


async def test_http_routes_make_the_port_http_routed(agent):
    await agent.apply_policies(VS, "vs.yaml")
    p = plan_outbound("198.19.0.2", "198.20.0.11", 80, agent.view, EndpointHealth(), 0.0)
    assert isinstance(p[0], HttpRouted) and p[0].service.name == "api"


async def test_a_bad_traffic_document_rejects_the_whole_file_and_keeps_what_was_in_force(agent):
    await agent.apply_policies(DR, "dr.yaml")
    bad = POLICY + "---\n" + DR.replace("maxConnections: 1", "maxConnections: 0")
    with pytest.raises(ApiError) as e:
        await agent.apply_policies(bad, "bad.yaml")
    assert e.value.status == 400 and "bad.yaml:11: spec.trafficPolicy.connectionPool.tcp.maxConnections" in str(e.value)
    assert agent.list_policies() == []  # the valid AuthorizationPolicy of that file was not applied either
    assert [r["name"] for r in agent.traffic_dump()["rules"]] == ["web"]
    assert await agent.delete_policy("shop", "web") == {"deleted": "shop/web"}
    assert agent.traffic_dump()["rules"] == []


async def test_ctl_traffic_table_and_the_admin_route(agent, autojump_clock):
    from agent.admin.routes import route
    from agent.cli.ctl_views import traffic as _traffic_table

    assert route("GET", "/v1/traffic").handler == "traffic_dump"
    now = trio.current_time()  # traffic_dump reads trio's clock inside a run
    await agent.apply_policies(DR, "dr.yaml")
    p = plan_outbound("198.19.0.2", "198.20.0.10", 80, agent.view, agent.health, now)[0]
    for _ in range(5):
        agent.health.traffic.report(p.cluster, "198.19.0.3", "connect_failure", now)
    assert "no endpoint is ejected" in _traffic_table(agent.traffic_dump())  # no outlierDetection in this rule
    await agent.apply_policies(DR.replace("connectTimeout: 1s}}", "connectTimeout: 1s}}, outlierDetection: "
                                    "{consecutive5xxErrors: 1}"), "dr.yaml")
    p = plan_outbound("198.19.0.2", "198.20.0.10", 80, agent.view, agent.health, now)[0]
    agent.health.traffic.report(p.cluster, "198.19.0.3", "connect_failure", now)
    text = _traffic_table(agent.traffic_dump())
    assert "DestinationRule" in text and "shop/web" in text
    assert "198.19.0.3" in text and "consecutive_5xx" in text and "30.0 s" in text
