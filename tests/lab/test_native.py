"""The mesh suite against the native data plane (``dataplane.engine: native``): the same
real clients and checks as test_mesh.py, in a lab whose agents run the Rust core, plus
what is the core's own: its stats, its live connections, its named handshake refusals,
and bytes byte-exact both ways (sha256 of 10 MiB and of 128 MiB each way at once)."""

import hashlib
import time

import pytest

from tests.lab import test_mesh as m
from tests.lab.conftest import MESH_TOPOLOGY, PY, lab_up, ns_py, ns_run


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with lab_up("cnative", "--engine", "native", topology=MESH_TOPOLOGY,
                tmp=tmp_path_factory.mktemp("cnative")) as lab:
        lab.serve_http("web", 8080)
        lab.serve_http("db", 9090)
        yield lab


def engine(lab, node: int) -> dict:
    return lab.admin(node, "GET", "/v1/stats")[1]["engine"]


# the mesh suite, unchanged, on the native engine (tunnel reuse is the Python engine's
# hostmesh-streams/1, which the native core does not carry: HBONE replaces it, issue 17)
test_cross_node_http_keeps_source_ip_and_both_agents_record_it = m.test_cross_node_http_keeps_source_ip_and_both_agents_record_it
test_ipv6_across_nodes = m.test_ipv6_across_nodes
test_same_node_takes_the_local_path = m.test_same_node_takes_the_local_path
test_passthrough_to_a_host_outside_the_mesh = m.test_passthrough_to_a_host_outside_the_mesh
test_half_close_across_the_tunnel = m.test_half_close_across_the_tunnel
test_integrity_both_ways_at_once_with_half_close = m.test_integrity_both_ways_at_once_with_half_close
test_l4_deny_fails_at_once_and_l7_deny_is_403_on_the_same_keepalive = m.test_l4_deny_fails_at_once_and_l7_deny_is_403_on_the_same_keepalive
test_strict_refuses_plaintext_from_outside_permissive_lets_it_in = m.test_strict_refuses_plaintext_from_outside_permissive_lets_it_in
test_live_connection_closed_within_1s_when_a_policy_now_denies_it = m.test_live_connection_closed_within_1s_when_a_policy_now_denies_it
test_fail_closed_when_the_agent_is_killed = m.test_fail_closed_when_the_agent_is_killed


def test_both_agents_run_the_native_core_and_connections_share_one_hbone_connection(mesh):
    before = engine(mesh, 1)
    for i in range(3):
        r = m.curl(mesh, "client", f"http://{mesh.pod('web')['ip']}:8080/native{i}")
        assert r.returncode == 0, r.stderr
    time.sleep(0.3)
    src, dst = engine(mesh, 1), engine(mesh, 0)
    assert src["engine"] == dst["engine"] == "native"
    # HBONE (the default between agents): three connections, three streams, at most one
    # new TLS connection (the pool keeps the first); test_hbone_interop.py checks the
    # HTTP/1.1 CONNECT protocol's handshakes
    assert dst["hbone_streams_opened"] >= 3
    assert src["hbone_connections_opened"] - before.get("hbone_connections_opened", 0) <= 1
    assert src["client_handshakes"] >= 1 and dst["server_handshakes"] >= 1
    assert src["bytes_received"] > 0 and dst["bytes_sent"] > 0


def test_ten_mib_each_way_at_once_byte_exact_and_counted_by_both_agents(mesh):
    mib = 10
    db = mesh.pod("db")
    srv = mesh.spawn(db["netns"], PY, "-c", m.SINK.format(port=9400, mib=mib))
    time.sleep(0.5)  # a one-shot server: probing it would consume its only accept
    r = ns_py(mesh.pod("client")["netns"], m.SOURCE.format(ip=db["ip"], port=9400, mib=mib), timeout=120)
    want = hashlib.sha256((bytes(range(256)) * 4096) * mib).hexdigest()
    assert r.stdout.split() == [str(mib << 20), want], r.stderr
    out, _ = srv.communicate(timeout=30)
    assert out.split() == [str(mib << 20), want]
    time.sleep(1.3)  # access log flush interval
    out_rec = [x for x in mesh.access_log(1) if x["dst"]["port"] == 9400 and x["direction"] == "outbound"]
    in_rec = [x for x in mesh.access_log(0) if x["dst"]["port"] == 9400 and x["direction"] == "inbound"]
    assert out_rec[-1]["bytes_sent"] == in_rec[-1]["bytes_sent"] == mib << 20
    assert out_rec[-1]["bytes_received"] == in_rec[-1]["bytes_received"] == mib << 20


def test_live_connections_are_listed_with_their_bytes(mesh):
    db = mesh.pod("db")
    holder = mesh.spawn(db["netns"], PY, "-c", "import socket,time\nls=socket.create_server(('0.0.0.0',9500))\n"
                        "c,_=ls.accept()\nc.sendall(b'x'*1000)\ntime.sleep(30)")
    time.sleep(0.4)
    client = mesh.spawn(mesh.pod("client")["netns"], PY, "-c", f"""
import socket, time
c = socket.create_connection(("{db['ip']}", 9500))
c.sendall(b'y' * 300)
print(len(c.recv(2000)), flush=True)
time.sleep(30)
""")
    try:
        assert client.stdout.readline().strip() == "1000"
        time.sleep(0.2)
        live = [c for c in mesh.admin(1, "GET", "/v1/connections")[1] if c["dst"]["port"] == 9500]
        assert len(live) == 1 and live[0]["mode"] == "tunnel"
        assert (live[0]["bytes_sent"], live[0]["bytes_received"]) == (300, 1000)
        assert engine(mesh, 1)["connections"] >= 1
    finally:
        client.kill()
        holder.kill()


def test_tunnel_port_names_every_refusal(mesh):
    node0 = mesh.node(0)["address"]
    ext = mesh.status["external"]["netns"]
    before = engine(mesh, 0)
    ns_py(ext, f"import socket; s=socket.create_connection(('{node0}',15008),3); s.sendall(b'GET / HTTP/1.1\\r\\n\\r\\n'); s.recv(10)")
    ns_run(ext, "openssl", "s_client", "-connect", f"{node0}:15008", "-tls1_3", "-brief",
           "-servername", "web-sa.shop.hostmesh.internal", input="", timeout=20)
    r = ns_run(ext, "openssl", "s_client", "-connect", f"{node0}:15008", "-tls1_2", input="", timeout=20)
    assert r.returncode != 0
    time.sleep(0.3)
    after = engine(mesh, 0)

    def grew(k):
        return after.get(k, 0) - before.get(k, 0)
    assert grew("peer_rejected_not_tls") == 1, after
    assert grew("peer_rejected_no_certificate") == 1, after
    assert grew("peer_rejected_tls_version") == 1, after
    time.sleep(0.5)  # the agent copies the core's counters four times a second
    counters = mesh.stats(0)
    assert counters["native_peer_rejected_not_tls"] == after["peer_rejected_not_tls"]
    metrics = ns_run(mesh.node(0)["netns"], "curl", "-s", "http://127.0.0.1:15020/metrics").stdout
    assert 'event="native_peer_rejected_tls_version"' in metrics
