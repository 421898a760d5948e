"""HBONE's Python-side decisions (agent.proxy.hbone): the baggage a source sends and
what a peer's baggage says, the pod address -> identity map, and the source an inbound
stream is judged as (the outer peer; ``forwarded`` only cross-checked)."""

from hypothesis import given
from hypothesis import strategies as st

from agent.proxy import hbone
from agent.state.workloads import Workload

TD = "cluster.local"


def wl(name, ns, sa, *ips, node=None, labels=None):
    return Workload(uid=f"{ns}/{name}", name=name, namespace=ns, service_account=sa, ips=ips, labels=labels or {},
                    node=node)


def test_baggage_carries_ztunnels_keys_with_the_canonical_service():
    assert hbone.baggage("shop", "web-0", {"app": "web", "version": "v2"}) == (
        "k8s.namespace.name=shop,k8s.pod.name=web-0,service.name=web,service.version=v2")
    assert hbone.baggage("shop", "web-0", {}, cluster="Kubernetes") == (
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.pod.name=web-0,service.name=web-0,"
        "service.version=latest")
    # a value with a separator is escaped, never splits the header
    assert hbone.baggage("a", "b", {"app": "x,y=z"}).split(",")[2] == "service.name=x%2Cy%3Dz"


def test_parse_baggage_reads_ztunnels_keys_and_skips_the_rest():
    b = hbone.parse_baggage("k8s.cluster.name=c1, k8s.namespace.name=shop,k8s.deployment.name=web;p=1,"
                            "service.name=web%2Dsvc,service.version=v1,junk,=x,other=1")
    assert b == hbone.Baggage("c1", "shop", "web", "web-svc", "v1")
    assert hbone.parse_baggage(None) == hbone.Baggage()
    assert hbone.parse_baggage("k8s.namespace.name=" + "x" * hbone.BAGGAGE_MAX) == hbone.Baggage()
    # the first value of a repeated key wins
    assert hbone.parse_baggage("k8s.namespace.name=a,k8s.namespace.name=b").namespace == "a"


@given(st.text(max_size=300))
def test_parse_baggage_never_raises(s):
    assert isinstance(hbone.parse_baggage(s), hbone.Baggage)


def test_baggage_round_trips():
    b = hbone.parse_baggage(hbone.baggage("shop", "web-0", {"app": "web"}, cluster="k"))
    assert b == hbone.Baggage("k", "shop", "web-0", "web", "latest")


def test_baggage_workload_stands_in_for_an_unknown_source():
    b = hbone.Baggage("c1", "shop", "web", "web-svc", "v1")
    w = hbone.baggage_workload(b, "spiffe://cluster.local/ns/shop/sa/web-sa", "10.9.0.5")
    assert (w.name, w.namespace, w.service_account, w.ips, w.node) == ("web", "shop", "web-sa", ("10.9.0.5",),
                                                                      "peer:c1")
    assert dict(w.labels) == {"service.istio.io/canonical-name": "web-svc", "service.istio.io/canonical-revision": "v1"}
    assert hbone.baggage_workload(hbone.Baggage(namespace="shop"), None, "10.9.0.5") is None


def test_pod_identities_lists_every_address_of_every_local_pod():
    pods = [wl("b", "shop", "web-sa", "198.19.0.3", "fd00::3"), wl("a", "front", "c-sa", "198.19.0.2")]
    assert hbone.pod_identities(pods, TD) == [
        ("198.19.0.2", "spiffe://cluster.local/ns/front/sa/c-sa"),
        ("198.19.0.3", "spiffe://cluster.local/ns/shop/sa/web-sa"),
        ("fd00::3", "spiffe://cluster.local/ns/shop/sa/web-sa")]
    assert hbone.pod_identities([], TD) == []


CLIENT = "spiffe://cluster.local/ns/front/sa/client-sa"


def lookup(*workloads):
    table = {ip: w for w in workloads for ip in w.ips}
    return table.get


def test_stream_source_is_the_outer_peer():
    client = wl("client", "front", "client-sa", "198.19.1.2", node="node-1")
    by_ip = lookup(client)
    # consistent: the peer's workload, forwarded agreeing (or absent)
    for fwd in (None, ("198.19.1.2", 40000)):
        s = hbone.stream_source(by_ip, TD, CLIENT, ("198.19.1.2", 40000), fwd)
        assert (s.ip, s.port, s.workload, s.mismatch) == ("198.19.1.2", 40000, client, None)
    # forwarded names another address: ignored (ztunnel's rule), counted
    s = hbone.stream_source(by_ip, TD, CLIENT, ("198.19.1.2", 40000), ("198.19.9.9", 1))
    assert (s.ip, s.port, s.workload) == ("198.19.1.2", 40000, client)
    assert s.mismatch == "forwarded names another address than the outer connection"
    # the outer address is another identity's pod: the address stays, the workload is not believed
    s = hbone.stream_source(by_ip, TD, "spiffe://cluster.local/ns/evil/sa/x", ("198.19.1.2", 40000), None)
    assert (s.ip, s.workload, s.mismatch) == ("198.19.1.2", None,
                                              "outer address belongs to a workload of another identity")
    # an address nobody registered (a ztunnel peer's pod): no workload, nothing to doubt
    s = hbone.stream_source(by_ip, TD, CLIENT, ("10.9.0.5", 5), None)
    assert (s.ip, s.workload, s.mismatch) == ("10.9.0.5", None, None)


def test_falls_back_only_when_the_pods_15008_gave_no_hbone_answer():
    table = [
        (502, "connect_failed: connection refused", True),   # nothing there (fail-closed capture: a reset)
        (504, "connect_failed: timed out", True),            # xt_TPROXY dropped it (iptables, no listener)
        (502, "tls: peer did not select ALPN h2", True),     # a TLS server that is not HBONE
        (502, "tls: unexpected_identity", True),             # CONNECT checks the same identity again
        (504, "h2 handshake: timeout", True),
        (502, "tunnel_reset: stream reset", False),          # a working connection's trouble
        (503, "connect_failed: connection refused", False),  # the peer answered 503
        (401, "denied", False),
        (503, "no_certificate: none", False),
    ]
    assert [hbone.falls_back(s, r) for s, r, _ in table] == [want for _, _, want in table]
