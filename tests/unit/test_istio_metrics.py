"""Istio's standard series from records (agent.telemetry.istio / account): label values as
Istio and ztunnel derive them, and when each counter moves. Pure: records in, text out."""

from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.telemetry import account
from agent.telemetry.istio import (
    BUCKETS,
    HTTP_LABELS,
    TCP_LABELS,
    LabelContext,
    ServiceRef,
    canonical,
    response_flags,
    service_index,
    service_ref,
    tcp_labels,
)
from agent.telemetry.metrics import Metrics
from agent.telemetry.record import ConnRecord, Endpoint, RequestRecord

CTX = LabelContext(cluster="east", local_node="node-1",
                   localities={"node-0": ("eu-west1", "eu-west1-b"), "node-1": ("eu-west1", "eu-west1-c")})
CLIENT = Endpoint("198.19.1.2", 40000, "client", "front", "spiffe://cluster.local/ns/front/sa/client",
                  MappingProxyType({"app": "client"}), None)
WEB = Endpoint("198.19.0.2", 8080, "web-0", "shop", "spiffe://cluster.local/ns/shop/sa/web",
               MappingProxyType({"app.kubernetes.io/name": "web", "app": "ignored", "version": "v2"}), "node-0")
SVC = service_ref("web", "shop")


def conn(**kw) -> ConnRecord:
    base = dict(start=100.0, end=101.0, node="node-1", direction="outbound", mode="tunnel", src=CLIENT, dst=WEB,
                bytes_sent=79, bytes_received=1073, verdict="allow", policy=None, reason="closed", trace_id=None,
                service=SVC)
    base.update(kw)
    return ConnRecord(**base)


def req(**kw) -> RequestRecord:
    base = dict(start=0.0, end=0.0125, node="node-1", src=CLIENT, dst=WEB, method="GET", path="/", host="web",
                status=200, verdict="allow", policy=None, direction="outbound", mode="tunnel", request_bytes=80,
                response_bytes=1200, service=SVC)
    base.update(kw)
    return RequestRecord(**base)


def labels(lb: tuple, names=TCP_LABELS) -> dict:
    return dict(zip(names, lb))


@pytest.mark.parametrize("lbs, workload, want", [
    ({"service.istio.io/canonical-name": "a", "app.kubernetes.io/name": "b", "app": "c"}, "w", ("a", "latest")),
    ({"app.kubernetes.io/name": "b", "app": "c", "app.kubernetes.io/version": "1.2", "version": "v9"}, "w",
     ("b", "1.2")),
    ({"app": "c", "version": "v1"}, "w", ("c", "v1")),
    ({"service.istio.io/canonical-revision": "r7", "version": "v1"}, "w", ("w", "r7")),
    ({}, "w", ("w", "latest")),
    (None, None, ("unknown", "latest")),
])
def test_canonical_service_and_revision_in_istios_order(lbs, workload, want):
    assert canonical(lbs, workload) == want


def test_tcp_labels_of_a_tunnelled_connection_at_the_source():
    got = labels(tcp_labels(conn(), CTX))
    assert got == {
        "reporter": "source",
        "source_workload": "client", "source_canonical_service": "client", "source_canonical_revision": "latest",
        "source_workload_namespace": "front", "source_principal": "spiffe://cluster.local/ns/front/sa/client",
        "source_app": "client", "source_version": "latest", "source_cluster": "east",
        "destination_service": "web.shop.svc.cluster.local", "destination_service_namespace": "shop",
        "destination_service_name": "web",
        "destination_workload": "web-0", "destination_canonical_service": "web",
        "destination_canonical_revision": "v2", "destination_workload_namespace": "shop",
        "destination_principal": "spiffe://cluster.local/ns/shop/sa/web", "destination_app": "web",
        "destination_version": "v2", "destination_cluster": "east",
        "request_protocol": "tcp", "response_flags": "-", "connection_security_policy": "mutual_tls",
        "source_region": "eu-west1", "source_zone": "eu-west1-c",
        "destination_region": "eu-west1", "destination_zone": "eu-west1-b",
    }


def test_unknowns_stay_unknown():
    outside = Endpoint("203.0.113.9", 80)
    got = labels(tcp_labels(conn(direction="inbound", mode="plaintext", src=outside, service=None), CTX))
    assert got["reporter"] == "destination" and got["connection_security_policy"] == "unknown"
    assert {got[k] for k in ("source_workload", "source_canonical_service", "source_principal", "source_cluster",
                             "destination_service", "source_region")} == {"unknown"}
    assert got["destination_workload"] == "web-0"


@pytest.mark.parametrize("verdict, reason, flags", [
    ("allow", "closed", "-"),
    ("allow", "reset", "-"),
    ("deny", "denied", "DENY"),  # ztunnel's L4 deny (not Envoy's UAEX, an external authorizer)
    ("deny", "tunnel_status_403", "DENY"),
    ("allow", "connect_failed: Connection refused", "UF"),
    ("allow", "upstream_failed", "UF"),
    ("allow", "tunnel_status_502", "UF"),
    ("deny", "no_endpoint", "UH"),
    ("deny", "unknown_destination", "NR"),
    ("allow", "pool_overflow", "UO"),
    ("allow", "retries_exhausted", "URX"),
])
def test_response_flags(verdict, reason, flags):
    assert response_flags(verdict, reason) == flags


@pytest.mark.parametrize("verdict, reason, flags", [
    ("deny", "closed", "-"),  # a request denied on a keep-alive connection: its 403, not the connection's
    ("deny", "denied", "-"),
    ("allow", "reset", "-"),
    ("deny", "policy_changed", "DENY"),  # ztunnel's late rejection
])
def test_an_established_connection_is_flagged_only_by_a_late_rejection(verdict, reason, flags):
    assert response_flags(verdict, reason, established=True) == flags


def test_service_index_guesses_the_service_a_pod_serves_on_a_port():
    from agent.proxy.plan import Service

    web = Service("web", "shop", "10.96.0.10", frozenset({80}), ("198.19.0.2", "198.19.1.3"), 8080)
    alias = Service("alias", "shop", "10.96.0.11", frozenset({80}), ("198.19.0.2",), 8080)
    raw = Service("db", "data", "10.96.0.12", frozenset({5432}), ("198.19.0.9",))
    idx = service_index({("10.96.0.10", 80): web, ("10.96.0.11", 80): alias, ("10.96.0.12", 5432): raw})
    assert idx[("198.19.0.2", 8080)] == ServiceRef("alias", "shop", "alias.shop.svc.cluster.local")
    assert idx[("198.19.1.3", 8080)].name == "web"
    assert idx[("198.19.0.9", 5432)].hostname == "db.data.svc.cluster.local"
    assert ("198.19.0.2", 80) not in idx


def series(m: Metrics, name: str) -> dict:
    return {lb[TCP_LABELS.index("response_flags")]: v for lb, v in m.counters.get(name, {}).items()}


def test_counters_move_when_opened_as_bytes_flow_and_when_closed():
    m = Metrics()
    acct = account.opened(m, conn(bytes_sent=0, bytes_received=0), CTX)
    assert series(m, "istio_tcp_connections_opened_total") == {"-": 1}
    assert m.gauges["istio_tcp_sockets_open"] == {("source",): 1}
    assert "istio_tcp_connections_closed_total" not in m.counters
    account.flow(m, acct, 10, 500)  # a long-lived connection, still open
    account.flow(m, acct, 10, 700)
    # Istio's directions: received = towards the server, sent = back to the client
    assert series(m, "istio_tcp_received_bytes_total") == {"-": 10}
    assert series(m, "istio_tcp_sent_bytes_total") == {"-": 700}
    account.closed(m, acct, conn(bytes_sent=79, bytes_received=1073), CTX)
    assert series(m, "istio_tcp_received_bytes_total") == {"-": 79}
    assert series(m, "istio_tcp_sent_bytes_total") == {"-": 1073}
    assert series(m, "istio_tcp_connections_closed_total") == {"-": 1}
    assert "istio_tcp_connections_failed_total" not in m.counters
    assert m.gauges["istio_tcp_sockets_open"] == {("source",): 0}


def test_a_denied_connection_is_opened_closed_and_failed_with_deny():
    m = Metrics()
    account.closed(m, None, conn(direction="inbound", bytes_sent=0, bytes_received=0, verdict="deny",
                                 policy="shop/deny", reason="denied"), CTX)
    assert series(m, "istio_tcp_connections_opened_total") == {"-": 1}
    assert series(m, "istio_tcp_connections_closed_total") == {"DENY": 1}
    assert series(m, "istio_tcp_connections_failed_total") == {"DENY": 1}


def test_a_flag_the_data_path_set_wins():
    from dataclasses import replace

    m = Metrics()
    rec = replace(conn(bytes_sent=0, bytes_received=0, reason="connect_failed"), response_flags="UO") \
        if "response_flags" in ConnRecord.__dataclass_fields__ else None
    if rec is None:  # records without the field (before the traffic rules' merge): derived
        rec = conn(bytes_sent=0, bytes_received=0, reason="connect_failed")
    account.closed(m, None, rec, CTX)
    want = getattr(rec, "response_flags", None) or "UF"
    assert series(m, "istio_tcp_connections_failed_total") == {want: 1}


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), max_size=20))
def test_bytes_are_never_counted_twice(steps):
    m = Metrics()
    acct = account.opened(m, conn(), CTX)
    up = down = 0
    for a, b in steps:
        up, down = up + a, down + b
        account.flow(m, acct, up, down)
    account.closed(m, acct, conn(bytes_sent=up, bytes_received=down), CTX)
    assert sum(m.counters.get("istio_tcp_received_bytes_total", {}).values()) == up
    assert sum(m.counters.get("istio_tcp_sent_bytes_total", {}).values()) == down


def test_requests_count_by_status_with_istios_buckets():
    m = Metrics()
    account.request(m, req(), CTX)
    account.request(m, req(status=403, verdict="deny", response_bytes=150, end=0.002), CTX)
    by_code = {labels(lb, HTTP_LABELS)["response_code"]: v for lb, v in m.counters["istio_requests_total"].items()}
    assert by_code == {"200": 1, "403": 1}
    lb = next(iter(m.counters["istio_requests_total"]))
    got = labels(lb, HTTP_LABELS)
    assert (got["request_protocol"], got["response_flags"], got["reporter"]) == ("http", "-", "source")
    text = m.render()
    assert len(BUCKETS) == 19 and BUCKETS[-1] == 3600000
    ok = [ln for ln in text.splitlines() if 'response_code="200"' in ln]
    assert any(ln.startswith("istio_request_duration_milliseconds_bucket{") and 'le="10"' in ln and ln.endswith(" 0")
               for ln in ok)
    assert any(ln.startswith("istio_request_duration_milliseconds_bucket{") and 'le="25"' in ln and ln.endswith(" 1")
               for ln in ok)
    assert any(ln.startswith("istio_request_duration_milliseconds_sum{") and ln.endswith(" 12.5") for ln in ok)
    assert any(ln.startswith("istio_response_bytes_bucket{") and 'le="1000"' in ln and ln.endswith(" 0") for ln in ok)
    assert any(ln.startswith("istio_response_bytes_bucket{") and 'le="2500"' in ln and ln.endswith(" 1") for ln in ok)
    assert any(ln.startswith("istio_request_bytes_count{") and ln.endswith(" 1") for ln in ok)
    assert any(ln.startswith('istio_request_bytes_bucket{') and 'le="3600000"' in ln for ln in ok)
    assert "# TYPE istio_request_bytes histogram" in text
