"""DestinationRule / VirtualService loading (agent.traffic.loader, hosts), pure."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.rbac.loader import load_documents
from agent.traffic.hosts import resolve_host
from agent.traffic.loader import TrafficError, duration_s, load_traffic

DR = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    connectionPool: {tcp: {maxConnections: 100, connectTimeout: 250ms}}
    outlierDetection: {consecutiveGatewayErrors: 2, interval: 1s, baseEjectionTime: 3s, maxEjectionPercent: 50}
    portLevelSettings:
      - port: {number: 80}
        loadBalancer: {simple: ROUND_ROBIN}
  subsets:
    - {name: v1, labels: {version: v1}}
    - name: v2
      labels: {version: v2}
      trafficPolicy: {loadBalancer: {simple: RANDOM}}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  hosts: [web.shop.svc.cluster.local]
  tcp:
    - route:
        - {destination: {host: web, subset: v1}, weight: 90}
        - {destination: {host: web, subset: v2}, weight: 10}
  http:
    - match: [{uri: {prefix: /api}, headers: {X-Canary: {exact: "1"}}}]
      route: [{destination: {host: web, subset: v2}}]
      timeout: 2s
      retries: {attempts: 2, perTryTimeout: 500ms, retryOn: "503,connect-failure"}
"""


def test_loads_both_kinds_with_istio_semantics():
    dr, vs = (x.doc for x in load_traffic(DR, "t.yaml"))
    assert dr.host == ("shop", "web")
    pol = dr.policy
    assert pol.load_balancer.simple == "LEAST_REQUEST"
    assert (pol.connection_pool.max_connections, pol.connection_pool.connect_timeout_s) == (100, 0.25)
    o = pol.outlier
    assert (o.consecutive_gateway, o.consecutive_5xx, o.interval_s, o.base_ejection_s, o.max_ejection_percent) == \
        (2, 5, 1.0, 3.0, 50)
    # port-level over the rule, subset over both, field by field
    assert dr.effective(80, None).load_balancer.simple == "ROUND_ROBIN"
    assert dr.effective(81, None).load_balancer.simple == "LEAST_REQUEST"
    e = dr.effective(80, "v2")
    assert e.load_balancer.simple == "RANDOM" and e.connection_pool.max_connections == 100
    assert [(d.subset, d.weight) for d in vs.tcp[0].route] == [("v1", 90), ("v2", 10)]
    h = vs.http[0]
    assert h.matches[0].uri.kind == "prefix" and h.matches[0].headers == (("x-canary", h.matches[0].headers[0][1]),)
    assert (h.timeout_s, h.retries.attempts, h.retries.per_try_timeout_s) == (2.0, 2, 0.5)
    assert h.retries.retry_on == {"503", "connect-failure"}


def test_policy_loader_skips_traffic_documents_and_traffic_loader_skips_policies():
    mixed = DR + "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {}\n"
    assert [d.name for d in load_documents(mixed, "m.yaml")] == ["a"]
    assert len(load_traffic(mixed, "m.yaml")) == 2


@pytest.mark.parametrize("change, message", [
    ("maxEjectionPercent: 50}", "t.yaml:9: spec.trafficPolicy.outlierDetection.maxEjectionPercent: "
                                "Input should be less than or equal to 100"),
    ("interval: 1s", "t.yaml:9: spec.trafficPolicy.outlierDetection.interval: '1x' is not a duration"),
    ("tcp: {maxConnections: 100", "t.yaml:8: spec.trafficPolicy.connectionPool.tcp.maxConnections: Input should be"),
    ("simple: LEAST_REQUEST", "t.yaml:7: spec.trafficPolicy.loadBalancer.simple: 'PASSTHROUGH' is not supported"),
    ("outlierDetection: {", "t.yaml:9: spec.trafficPolicy.outlierDetection.minHealthPercent: not supported by hostmesh"),
    ("weight: 10}", "t.yaml:25: spec.tcp[0].route: every destination needs a weight when there are several"),
    ("host: web\n", "t.yaml:5: spec.host: host '*.shop': wildcard hosts are not supported"),
    ("retryOn: \"503", "t.yaml:32: spec.http[0].retries.retryOn: 'sometimes' is not supported"),
    ("{uri: {prefix: /api}", "t.yaml:29: spec.http[0].match[0].uri.regex: not supported by hostmesh"),
    ("bogus", "t.yaml:5: spec.bogus: unknown field"),
    ("apiVersion: networking.istio.io/v1beta1", "t.yaml:19: apiVersion: apiVersion 'networking.istio.io/v1alpha3'"),
])
def test_errors_name_the_line_and_field(change, message):
    bad = {
        "maxEjectionPercent: 50}": DR.replace("maxEjectionPercent: 50}", "maxEjectionPercent: 500}"),
        "interval: 1s": DR.replace("interval: 1s", "interval: 1x"),
        "tcp: {maxConnections: 100": DR.replace("maxConnections: 100", "maxConnections: -1"),
        "simple: LEAST_REQUEST": DR.replace("simple: LEAST_REQUEST", "simple: PASSTHROUGH"),
        "outlierDetection: {": DR.replace("outlierDetection: {", "outlierDetection: {minHealthPercent: 5, "),
        "weight: 10}": DR.replace(", weight: 10}", "}"),
        "host: web\n": DR.replace("  host: web\n", "  host: '*.shop'\n"),
        "retryOn: \"503": DR.replace('retryOn: "503', 'retryOn: "sometimes'),
        "{uri: {prefix: /api}": DR.replace("{uri: {prefix: /api}", "{uri: {regex: /a.*}"),
        "bogus": DR.replace("spec:\n  host", "spec:\n  bogus: 1\n  host", 1),
        "apiVersion: networking.istio.io/v1beta1": DR.replace("networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"),
    }[change]
    with pytest.raises(TrafficError) as e:
        load_traffic(bad, "t.yaml")
    assert message in str(e.value)


def test_unsupported_kind_is_refused():
    with pytest.raises(TrafficError, match=r"x.yaml:2: kind: kind 'ServiceEntry' is not supported"):
        load_traffic("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\nspec: {}\n", "x.yaml")


@pytest.mark.parametrize("host, ns, domain, key", [
    ("reviews", "shop", "cluster.local", ("shop", "reviews")),
    ("reviews.bookinfo", "shop", "cluster.local", ("bookinfo", "reviews")),
    ("reviews.bookinfo.svc", "shop", "cluster.local", ("bookinfo", "reviews")),
    ("reviews.bookinfo.svc.cluster.local", "shop", "cluster.local", ("bookinfo", "reviews")),
    ("Reviews.Bookinfo.svc.corp.example.", "shop", "corp.example", ("bookinfo", "reviews")),
    ("reviews.bookinfo.svc.cluster.local", "shop", "corp.example", None),
    ("*.bookinfo.svc.cluster.local", "shop", "cluster.local", None),
    ("www.example.com", "shop", "cluster.local", None),
])
def test_hosts_resolve_as_istio(host, ns, domain, key):
    if key is None:
        with pytest.raises(ValueError):
            resolve_host(host, ns, domain)
    else:
        assert resolve_host(host, ns, domain) == key


@pytest.mark.parametrize("text, seconds", [("10s", 10), ("1.5s", 1.5), ("100ms", 0.1), ("1m30s", 90), ("2h", 7200)])
def test_durations(text, seconds):
    assert duration_s(text) == pytest.approx(seconds)


@given(st.text(max_size=20))
def test_duration_parser_never_crashes(s):
    try:
        assert duration_s(s) >= 0
    except ValueError:
        pass


@given(st.dictionaries(st.sampled_from(["host", "subsets", "trafficPolicy", "x"]),
                       st.one_of(st.text(max_size=8), st.integers(), st.lists(st.text(max_size=4), max_size=2)),
                       max_size=4))
def test_any_spec_loads_or_fails_with_a_line(spec):
    import json

    doc = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "n"}, "spec": spec}
    try:
        load_traffic(json.dumps(doc), "h.json")
    except TrafficError as e:
        assert all(line.startswith("h.json:1: ") for line in str(e).splitlines())


@given(st.text(alphabet="abc.-*XY5 ", max_size=40), st.sampled_from(["shop", "a-b"]))
def test_host_resolution_answers_a_key_or_says_why(host, ns):
    try:
        namespace, name = resolve_host(host, ns)
    except ValueError as e:
        assert repr(host) in str(e)
    else:
        assert resolve_host(f"{name}.{namespace}.svc.cluster.local", "other") == (namespace, name)


def test_a_file_without_traffic_documents_never_loads_the_models():
    # a fresh interpreter (this session has imported them): the agent's start path and a
    # policy-only file leave the pydantic models of agent.traffic.documents unbuilt
    import subprocess
    import sys

    code = ("import sys\n"
            "import agent.app, agent.policy_sources\n"
            "from agent.traffic.loader import load_traffic\n"
            "assert load_traffic('apiVersion: security.istio.io/v1\\nkind: AuthorizationPolicy\\n') == []\n"
            "print('agent.traffic.documents' in sys.modules)\n"
            "load_traffic('apiVersion: networking.istio.io/v1\\nkind: VirtualService\\nmetadata: {name: a}\\n'\n"
            "             'spec: {hosts: [a]}\\n')\n"
            "print('agent.traffic.documents' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "True"]
