"""The lab's Prometheus scrape config (pure) and Grafana's variable interpolation as the
dashboard test performs it (tests/lab/dashboards.py)."""

from agent.lab.services import SCRAPE_INTERVAL_S, prometheus_config
from tests.lab import dashboards as dash


def test_every_agent_is_a_target_with_a_ztunnel_daemonsets_labels():
    cfg = prometheus_config([("node-0", "198.18.0.1"), ("node-1", "198.18.0.2")])
    assert cfg["global"]["scrape_interval"] == f"{SCRAPE_INTERVAL_S}s"
    job = cfg["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [
        {"targets": ["198.18.0.1:15020"],
         "labels": {"namespace": "istio-system", "pod": "ztunnel-node-0", "app": "ztunnel", "node": "node-0"}},
        {"targets": ["198.18.0.2:15020"],
         "labels": {"namespace": "istio-system", "pod": "ztunnel-node-1", "app": "ztunnel", "node": "node-1"}},
    ]


def test_grafana_interpolation_of_single_multi_and_all_values():
    assert dash.format_value(["shop"], multi=False) == "shop"
    assert dash.format_value(["web.shop.svc.cluster.local", "db"], multi=True) == \
        "(web\\\\.shop\\\\.svc\\\\.cluster\\\\.local|db)"
    expr = 'sum(irate(x{a=~"$srcwl", b="$service"}[$__rate_interval]))'
    assert dash.interpolate(expr, {"srcwl": "(a|b)", "service": "s"}, "4s") == 'sum(irate(x{a=~"(a|b)", b="s"}[4s]))'
    series = [{"metric": {"destination_service": "web.shop.svc.cluster.local"}, "value": [0, "3"]},
              {"metric": {"destination_service": "unknown"}, "value": [0, "1"]}]
    assert dash.query_result_values(series, '.*destination_service="([^"]*).*') == [
        "unknown", "web.shop.svc.cluster.local"]


def test_the_four_dashboards_are_read_whole():
    counts = {f: len(dash.queries(f)) for f in dash.FILES}
    assert sum(counts.values()) == 174
    assert sum(1 for f in dash.FILES for v in dash.variables(f) if v.kind == "query") == 12
