"""Traffic through the mesh with real clients: tunnel, local path, passthrough,
integrity, half-close, policy, PeerAuthentication, fail-closed, live re-checks; and
what is the native core's own: its stats, its live connections, its named handshake
refusals, HBONE streams on pooled TLS connections, bytes byte-exact both ways."""

import hashlib
import json
import time

from tests.lab.conftest import PY, hm, ns_py, ns_run, wait_listen

DENY_OTHER = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-other, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
    - from: [{source: {namespaces: ["other"]}}]
"""
DENY_ADMIN_PATH = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules:
    - to: [{operation: {paths: ["/admin*"]}}]
"""
DB_ALLOW_NOBODY = """\
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: data}
spec: {}
"""
STRICT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: data}
spec:
  mtls: {mode: STRICT}
"""


def curl(lab, pod, url, *extra):
    return ns_run(lab.pod(pod)["netns"], "curl", "-s", "-m", "5", *extra, url)


def test_cross_node_http_keeps_source_ip_and_both_agents_record_it(mesh):
    web, client = mesh.pod("web"), mesh.pod("client")
    r = curl(mesh, "client", f"http://{web['ip']}:8080/hello")
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["client"].split(":")[0] == client["ip"]
    time.sleep(1.3)  # access log flush interval
    out = [x for x in mesh.access_log(1) if x["type"] == "connection" and x["dst"]["ip"] == web["ip"]
           and x["direction"] == "outbound"]
    inn = [x for x in mesh.access_log(0) if x["type"] == "connection" and x["src"]["ip"] == client["ip"]
           and x["direction"] == "inbound"]
    assert out and inn
    assert out[-1]["mode"] == inn[-1]["mode"] == "tunnel"
    assert inn[-1]["src"]["principal"] == "spiffe://cluster.local/ns/front/sa/client-sa"
    assert out[-1]["dst"]["principal"] == "spiffe://cluster.local/ns/shop/sa/web-sa"
    assert out[-1]["trace_id"] == inn[-1]["trace_id"] and len(out[-1]["trace_id"]) == 32
    # bytes counted by both agents agree, and cover the body curl received
    assert out[-1]["bytes_received"] == inn[-1]["bytes_received"] > len(r.stdout)
    assert out[-1]["bytes_sent"] == inn[-1]["bytes_sent"] > 0


def engine(lab, node: int) -> dict:
    return lab.admin(node, "GET", "/v1/stats")[1]["engine"]


def test_new_connections_ride_one_hbone_connection_and_each_keeps_its_own_record(mesh):
    """HBONE, the default between agents: 30 curls, each a new TCP connection, become 30
    HTTP/2 streams on at most one new TLS connection (the pool keeps the first), and each
    is its own connection at the destination: source IP, identity, trace id, bytes.
    (HTTP/1.1 CONNECT's handshake per connection and its resumption: test_hbone_interop.)"""
    web, client = mesh.pod("web"), mesh.pod("client")

    def inbound():
        return [x for x in mesh.access_log(0) if x["type"] == "connection" and x["src"]["ip"] == client["ip"]
                and x["direction"] == "inbound"]

    time.sleep(1.3)
    logged = len(inbound())
    src0, dst0 = engine(mesh, 1), engine(mesh, 0)
    seen = []
    for i in range(30):
        r = curl(mesh, "client", f"http://{web['ip']}:8080/stream-{i}")
        assert r.returncode == 0, r.stderr
        seen.append(json.loads(r.stdout)["client"])
    time.sleep(0.3)
    src, dst = engine(mesh, 1), engine(mesh, 0)
    assert src["engine"] == dst["engine"] == "native"
    assert all(s.split(":")[0] == client["ip"] for s in seen) and len(set(seen)) == 30

    def grew(after, before, key):
        return after.get(key, 0) - before.get(key, 0)

    assert grew(src, src0, "hbone_connections_opened") <= 1, (src0, src)
    assert grew(src, src0, "client_handshakes") <= 1
    assert grew(dst, dst0, "hbone_streams_opened") == 30
    assert grew(dst, dst0, "hbone_status_200") == 30, (dst0, dst)
    time.sleep(1.3)
    inn = inbound()[logged:]
    assert len(inn) == 30 and len({x["trace_id"] for x in inn}) == 30
    assert all(x["mode"] == "tunnel" and x["src"]["principal"].endswith("/ns/front/sa/client-sa") for x in inn)
    assert all(x["bytes_sent"] > 0 and x["bytes_received"] > 0 for x in inn)


def test_ten_mib_each_way_at_once_byte_exact_and_counted_by_both_agents(mesh):
    mib = 10
    db = mesh.pod("db")
    srv = mesh.spawn(db["netns"], PY, "-c", SINK.format(port=9400, mib=mib))
    time.sleep(0.5)  # a one-shot server: probing it would consume its only accept
    r = ns_py(mesh.pod("client")["netns"], SOURCE.format(ip=db["ip"], port=9400, mib=mib), timeout=120)
    want = hashlib.sha256((bytes(range(256)) * 4096) * mib).hexdigest()
    assert r.stdout.split() == [str(mib << 20), want], r.stderr
    out, _ = srv.communicate(timeout=30)
    assert out.split() == [str(mib << 20), want]
    time.sleep(1.3)  # access log flush interval
    out_rec = [x for x in mesh.access_log(1) if x["dst"]["port"] == 9400 and x["direction"] == "outbound"]
    in_rec = [x for x in mesh.access_log(0) if x["dst"]["port"] == 9400 and x["direction"] == "inbound"]
    assert out_rec[-1]["bytes_sent"] == in_rec[-1]["bytes_sent"] == mib << 20
    assert out_rec[-1]["bytes_received"] == in_rec[-1]["bytes_received"] == mib << 20


def held_connection(mesh, port: int, server: str, client: str):
    """A one-connection server on the db pod (``server`` runs on its accepted socket
    ``c``, which it then holds 30 s) and a client pod's connection to it (``client``
    runs on ``c``): (server, client) processes."""
    db = mesh.pod("db")
    holder = mesh.spawn(db["netns"], PY, "-c", f"import socket,time\nls=socket.create_server(('0.0.0.0',{port}))\n"
                        f"c,_=ls.accept()\n{server}time.sleep(30)")
    time.sleep(0.4)
    return holder, mesh.spawn(mesh.pod("client")["netns"], PY, "-c",
                              f"import socket, time\nc = socket.create_connection(('{db['ip']}', {port}))\n{client}")


def test_live_connections_are_listed_with_their_bytes(mesh):
    holder, client = held_connection(mesh, 9500, "c.sendall(b'x'*1000)\n", """
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


def test_ipv6_across_nodes(mesh):
    r = curl(mesh, "client", f"http://[{mesh.pod('db')['ip6']}]:9090/v6")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["client"].startswith(mesh.pod("client")["ip6"])


def test_same_node_takes_the_local_path(mesh):
    r = curl(mesh, "db", f"http://{mesh.pod('web')['ip']}:8080/local")
    assert r.returncode == 0
    assert json.loads(r.stdout)["client"].split(":")[0] == mesh.pod("db")["ip"]
    time.sleep(1.3)
    recs = [x for x in mesh.access_log(0) if x["type"] == "connection" and x["src"]["ip"] == mesh.pod("db")["ip"]]
    assert {x["direction"] for x in recs} == {"outbound", "inbound"} and {x["mode"] for x in recs} == {"local"}


def test_passthrough_to_a_host_outside_the_mesh(mesh):
    ext = mesh.status["external"]
    mesh.spawn(ext["netns"], PY, "-m", "agent.lab.httpd", "--port", "7070", "--bind", "0.0.0.0")
    wait_listen(ext["netns"], 7070)
    r = curl(mesh, "client", f"http://{ext['ip']}:7070/out")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["client"].split(":")[0] == mesh.pod("client")["ip"]


SINK = """
import hashlib, socket, sys
ls = socket.create_server(("0.0.0.0", {port}))
c, _ = ls.accept()
h, n = hashlib.sha256(), 0
import threading
data = bytes(range(256)) * 4096
def send():
    for _ in range({mib}):
        c.sendall(data)
    c.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send); t.start()
while True:
    d = c.recv(1 << 20)
    if not d: break
    h.update(d); n += len(d)
t.join()
print(n, h.hexdigest(), flush=True)
"""
SOURCE = """
import hashlib, socket, threading
c = socket.create_connection(("{ip}", {port}))
data = bytes(range(256)) * 4096
def send():
    for _ in range({mib}):
        c.sendall(data)
    c.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send); t.start()
h, n = hashlib.sha256(), 0
while True:
    d = c.recv(1 << 20)
    if not d: break
    h.update(d); n += len(d)
t.join()
print(n, h.hexdigest())
"""


def test_integrity_both_ways_at_once_with_half_close(mesh):
    mib = 128
    srv = mesh.spawn(mesh.pod("db")["netns"], PY, "-c", SINK.format(port=9100, mib=mib))
    time.sleep(0.5)  # a one-shot server: probing it would consume its only accept
    r = ns_py(mesh.pod("client")["netns"], SOURCE.format(ip=mesh.pod("db")["ip"], port=9100, mib=mib), timeout=120)
    want = hashlib.sha256((bytes(range(256)) * 4096) * mib).hexdigest()
    assert r.stdout.split() == [str(mib << 20), want], r.stderr
    out, _ = srv.communicate(timeout=30)
    assert out.split() == [str(mib << 20), want]


HALF_SERVER = """
import socket
ls = socket.create_server(("0.0.0.0", 9200))
c, _ = ls.accept()
req = b""
while True:
    d = c.recv(65536)
    if not d: break
    req += d
c.sendall(b"x" * (10 << 20))   # still sending after the client shut its side
c.close()
print(len(req))
"""
HALF_CLIENT = """
import socket
c = socket.create_connection(("{ip}", 9200))
c.sendall(b"request")
c.shutdown(socket.SHUT_WR)
n = 0
while True:
    d = c.recv(1 << 20)
    if not d: break
    n += len(d)
print(n)
"""


def test_half_close_across_the_tunnel(mesh):
    srv = mesh.spawn(mesh.pod("db")["netns"], PY, "-c", HALF_SERVER)
    time.sleep(0.5)
    r = ns_py(mesh.pod("client")["netns"], HALF_CLIENT.format(ip=mesh.pod("db")["ip"]), timeout=60)
    assert r.stdout.strip() == str(10 << 20), r.stderr
    assert srv.communicate(timeout=10)[0].strip() == "7"


def test_l4_deny_fails_at_once_and_l7_deny_is_403_on_the_same_keepalive(mesh):
    web = mesh.pod("web")
    try:
        mesh.apply(DENY_OTHER + "---\n" + DENY_ADMIN_PATH + "---\n" + DB_ALLOW_NOBODY)
        # L4: db allows nothing -> refused at once by the destination agent, not a hang
        denied_before = mesh.stats(0).get("policy_decisions_deny", 0)
        t0 = time.monotonic()
        r = ns_py(mesh.pod("client")["netns"], f"""
import socket
try:
    c = socket.create_connection(("{mesh.pod('db')['ip']}", 9090), 5)
    c.settimeout(5)
    print(repr(c.recv(10)))
except (ConnectionResetError, ConnectionRefusedError):
    print("reset")
""")
        assert r.stdout.strip() in ("reset", "b''"), r.stdout + r.stderr
        assert time.monotonic() - t0 < 3
        assert mesh.stats(0).get("policy_decisions_deny", 0) == denied_before + 1
        # L7: one keep-alive connection: /ok allowed, /admin denied naming the policy, /ok again
        r = ns_run(mesh.pod("client")["netns"], "curl", "-s", "-m", "5", "-v", "-w", " %{http_code}\n",
                   "-o", "/dev/null", f"http://{web['ip']}:8080/ok", "-o", "/dev/null",
                   f"http://{web['ip']}:8080/admin/x", "-o", "/dev/null", f"http://{web['ip']}:8080/ok2")
        assert r.stdout.split() == ["200", "403", "200"], r.stdout + r.stderr
        assert r.stderr.count("Connected to") == 1, r.stderr  # one connection for all three
        assert "x-hostmesh-policy: shop/no-admin" in r.stderr
        # the namespace `other` is denied at the destination
        r = curl(mesh, "other", f"http://{web['ip']}:8080/ok", "-o", "/dev/null", "-w", "%{http_code}")
        assert r.stdout == "403" or r.returncode != 0
        assert mesh.stats(0).get("policy_decisions_deny", 0) >= 2
    finally:
        mesh.clear_policies()


def test_strict_refuses_plaintext_from_outside_permissive_lets_it_in(mesh):
    ext = mesh.status["external"]
    db = mesh.pod("db")
    url = f"http://{db['ip']}:9090/plain"
    r = ns_run(ext["netns"], "curl", "-s", "-m", "5", url)
    assert r.returncode == 0 and json.loads(r.stdout)["client"].split(":")[0] == ext["ip"]
    try:
        mesh.apply(STRICT)
        r = ns_run(ext["netns"], "curl", "-s", "-m", "5", url)
        assert r.returncode != 0  # reset by the destination agent
        # mesh traffic (mTLS) is still fine under STRICT
        assert curl(mesh, "client", url).returncode == 0
    finally:
        mesh.clear_policies()


def test_live_connection_closed_within_1s_when_a_policy_now_denies_it(mesh):
    holder, client = held_connection(mesh, 9300, "", """
c.settimeout(20)
time.sleep(0.5)
print("open", flush=True)
t = time.monotonic()
try:
    d = c.recv(10)
    print("closed", repr(d), round(time.monotonic() - t, 2), flush=True)
except ConnectionResetError:
    print("closed reset", round(time.monotonic() - t, 2), flush=True)
""")
    assert client.stdout.readline().strip() == "open"
    try:
        t0 = time.monotonic()
        mesh.apply(DB_ALLOW_NOBODY)
        line = client.stdout.readline()
        assert line.startswith("closed"), line
        assert time.monotonic() - t0 < 2.5
        time.sleep(1.2)
        recs = [x for x in mesh.access_log(0) if x["dst"]["port"] == 9300]
        assert recs and recs[-1]["verdict"] == "deny" and "policy" in (recs[-1]["reason"] or "")
    finally:
        mesh.clear_policies()
        holder.kill()


def test_fail_closed_when_the_agent_is_killed(mesh):
    web = mesh.pod("web")
    try:
        assert hm("lab", "agent", "--name", mesh.name, "node-1", "kill").returncode == 0
        t0 = time.monotonic()
        r = ns_py(mesh.pod("client")["netns"], f"""
import socket
try:
    socket.create_connection(("{web['ip']}", 8080), 3)
    print("connected")
except ConnectionRefusedError:
    print("refused")
""")
        assert r.stdout.strip() == "refused" and time.monotonic() - t0 < 2
    finally:
        assert hm("lab", "agent", "--name", mesh.name, "node-1", "start").returncode == 0
        mesh.refresh()
    assert curl(mesh, "client", f"http://{web['ip']}:8080/back").returncode == 0


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


def test_capture_status_reports_no_drift_in_a_running_node(mesh):
    r = hm("capture", "status", "--netns", mesh.node(0)["netns"], "--config",
           str(__import__("pathlib").Path(mesh.node(0)["admin_socket"]).parent / "config.yaml"))
    assert r.returncode == 0, r.stdout + r.stderr
