"""HBONE through the iptables capture backend: HOSTMESH_IN's first rule TPROXYs a pod's
:15008 to the pod-address tunnel listener, so curl between pods on two nodes rides
HBONE there too (two connections, two streams, one TLS connection); the HBONE gauges
stay in /v1/stats "engine" and the counters are copied as native_<name>."""

import time

import pytest

from tests.lab.conftest import lab_up, ns_run

TOPOLOGY = """\
nodes: 2
pods:
  - {name: web, namespace: shop, service_account: web-sa, labels: {app: web}, node: 0}
  - {name: client, namespace: front, service_account: client-sa, labels: {app: client}, node: 1}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with lab_up("khbipt", "--capture-backend", "iptables", topology=TOPOLOGY,
                tmp=tmp_path_factory.mktemp("khbipt")) as lab:
        lab.serve_http("web", 8080)
        yield lab


def test_hbone_rides_the_iptables_capture(lab):
    rules = ns_run(lab.node(0)["netns"], "iptables", "-t", "mangle", "-S", "HOSTMESH_IN").stdout
    assert "-A HOSTMESH_IN -p tcp -m tcp --dport 15008 -j TPROXY --on-port 15008 --on-ip 127.0.0.1" in rules, rules
    for _ in range(2):
        r = ns_run(lab.pod("client")["netns"], "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
                   f"http://{lab.pod('web')['ip']}:8080/")
        assert r.stdout == "200", r
    dst = lab.admin(0, "GET", "/v1/stats")[1]["engine"]
    src = lab.admin(1, "GET", "/v1/stats")[1]["engine"]
    assert (dst["hbone_streams_opened"], dst["hbone_connections_opened"]) == (2, 1), dst
    assert (src["hbone_streams_opened"], src["hbone_connections_opened"]) == (2, 1), src
    # gauges stay in /v1/stats "engine"; the core's counters are copied as native_<name>
    assert dst["hbone_connections"] == 1 and dst["hbone_streams"] == 0
    time.sleep(0.5)  # the agent copies the core's counters four times a second
    counters = lab.stats(0)
    assert counters["native_hbone_streams_opened"] == 2
    assert not {"native_hbone_connections", "native_hbone_streams", "native_hbone_pooled"} & set(counters)
