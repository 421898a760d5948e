"""Traffic rules with real clients (docs/traffic.md): a weighted canary split and its
change, the connection limit (UO), outlier ejection under load with connect retries,
and locality failover. Each endpoint pod runs a server that says its name."""

import json
import time
from pathlib import Path

import pytest

from tests.lab.conftest import PY, lab_up, ns_py, ns_run, wait_for, wait_listen

GO = "/tmp/htraffic-held-go"
VIP, POOL_VIP, API_VIP = "198.18.100.30", "198.18.100.31", "198.18.100.32"
TOPOLOGY = f"""\
nodes: 2
node_labels:
  0: {{topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: za}}
  1: {{topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: zb}}
pods:
  - {{name: v1a, namespace: shop, labels: {{app: web, version: v1}}, node: 0}}
  - {{name: v1b, namespace: shop, labels: {{app: web, version: v1}}, node: 1}}
  - {{name: v2, namespace: shop, labels: {{app: web, version: v2}}, node: 1}}
  - {{name: client, namespace: front, node: 0}}
services:
  - {{name: web, namespace: shop, vip: {VIP}, port: 80, target_port: 9000, endpoints: [v1a, v1b, v2]}}
  - {{name: pool, namespace: shop, vip: {POOL_VIP}, port: 81, target_port: 9001, endpoints: [v1a]}}
  - {{name: api, namespace: shop, vip: {API_VIP}, port: 80, target_port: 9100, endpoints: [v1b]}}
"""
NAMED = """
import socket, sys, threading
name = sys.argv[1].encode() + b"\\n"
ls = socket.create_server(("0.0.0.0", int(sys.argv[2])), backlog=4096)
def serve(c):
    with c:
        try:
            c.sendall(name)
            while (d := c.recv(65536)):
                c.sendall(d)
        except OSError:
            pass
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
# N sequential connections to the VIP; each reads the endpoint's name. JSON: counts, failures, seconds.
CLIENT = """
import json, socket, time
counts, fails, t0 = {{}}, [], time.monotonic()
for i in range({n}):
    try:
        with socket.create_connection(("{ip}", {port}), 5) as s:
            s.settimeout(5)
            name = s.makefile("rb").readline().decode().strip()
            if not name: raise OSError("closed before the name")
            counts[name] = counts.get(name, 0) + 1
    except OSError as e:
        fails.append(f"{{i}}: {{e}}")
print(json.dumps({{"counts": counts, "fails": fails, "s": time.monotonic() - t0}}))
"""
SUBSETS = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web.shop.svc.cluster.local
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
"""
SPLIT = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: shop}}
spec:
  hosts: [web]
  tcp:
    - route:
        - {{destination: {{host: web, subset: v1}}, weight: {v1}}}
        - {{destination: {{host: web, subset: v2}}, weight: {v2}}}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with lab_up("htraffic", topology=TOPOLOGY, tmp=tmp_path_factory.mktemp("traffic")) as lab:
        lab.servers = {}
        for pod in ("v1a", "v1b", "v2"):
            start(lab, pod)
        ns = lab.pod("v1a")["netns"]
        lab.spawn(ns, PY, "-c", NAMED, "pool", "9001")
        wait_listen(ns, 9001)
        ns = lab.pod("v1b")["netns"]
        lab.spawn(ns, PY, "-c", FLAKY)
        wait_listen(ns, 9100)
        yield lab


def start(lab, pod):
    ns = lab.pod(pod)["netns"]
    lab.servers[pod] = lab.spawn(ns, PY, "-c", NAMED, pod, "9000")
    wait_listen(ns, 9000)


def kill(lab, pod):
    p = lab.servers.pop(pod)
    p.kill()
    p.wait()


def run_clients(lab, n, ip=VIP, port=80, timeout=240):
    r = ns_py(lab.pod("client")["netns"], CLIENT.format(n=n, ip=ip, port=port), timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def delete_rules(lab):
    for i in range(len(lab.status["nodes"])):
        for kind in ("web", "pool", "api"):
            lab.admin(i, "DELETE", f"/v1/policies/shop/{kind}")


def metrics(lab, node=0) -> str:
    return ns_py(lab.node(node)["netns"], "import urllib.request; print(urllib.request.urlopen("
                 "'http://127.0.0.1:15020/metrics').read().decode())").stdout


def traffic_dump(lab, node=0):
    return lab.admin(node, "GET", "/v1/config_dump")[1]["traffic"]


def test_weighted_split_90_10_then_50_50_within_a_second(lab):
    Path(GO).unlink(missing_ok=True)
    lab.apply(SUBSETS + "---\n" + SPLIT.format(v1=90, v2=10))
    # a live connection opened under 90/10 must survive the change untouched
    held = lab.spawn(lab.pod("client")["netns"], PY, "-c", f"""
import os, socket, time
s = socket.create_connection(("{VIP}", 80), 5)
f = s.makefile("rb")
print(f.readline().decode().strip(), flush=True)
while not os.path.exists("{GO}"):
    time.sleep(0.05)
s.sendall(b"still here\\n")
print(f.readline().decode().strip(), flush=True)
""")
    out = run_clients(lab, 2000)
    assert out["fails"] == [], out["fails"][:5]
    v1 = out["counts"].get("v1a", 0) + out["counts"].get("v1b", 0)
    share = 100.0 * v1 / 2000
    print(f"90/10: v1 {share:.1f} % of 2000 ({out['counts']}, {out['s']:.1f} s)")
    assert 87.0 <= share <= 93.0, out["counts"]
    t0 = time.monotonic()
    lab.apply(SPLIT.format(v1=50, v2=50))
    applied = time.monotonic() - t0
    out = run_clients(lab, 400)  # the second after the change
    v1 = out["counts"].get("v1a", 0) + out["counts"].get("v1b", 0)
    share = 100.0 * v1 / 400
    print(f"50/50 after the change: v1 {share:.1f} % of the next 400 (apply {applied:.2f} s, {out['s']:.1f} s)")
    assert out["fails"] == [] and 42.0 <= share <= 58.0 and applied < 1.0, out
    Path(GO).touch()
    first, echoed = held.stdout.readline().strip(), held.stdout.readline().strip()
    assert first in ("v1a", "v1b", "v2") and echoed == "still here"
    delete_rules(lab)


MANY = """
import json, socket, time
held = []
for _ in range(100):
    s = socket.create_connection(("{ip}", 81), 5)
    s.settimeout(5)
    assert s.recv(5) == b"pool\\n"
    held.append(s)
t0 = time.monotonic()
try:  # the agent accepts and resets at once: the reset may already meet the connect
    s = socket.create_connection(("{ip}", 81), 5)
    s.settimeout(5)
    got = s.recv(5)
    outcome = "eof" if not got else "data"
except ConnectionResetError:
    outcome = "reset"
print(json.dumps({{"outcome": outcome, "ms": (time.monotonic() - t0) * 1000}}), flush=True)
import os
while not os.path.exists("{go}"):
    time.sleep(0.05)
"""


def test_max_connections_100_refuses_the_101st_at_once_as_uo(lab):
    lab.apply("""\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pool, namespace: shop}
spec:
  host: pool
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 100}}}
""")
    Path(GO).unlink(missing_ok=True)
    p = lab.spawn(lab.pod("client")["netns"], PY, "-c", MANY.format(ip=POOL_VIP, go=GO))
    line = p.stdout.readline()
    assert line, p.stderr.read()
    out = json.loads(line)
    print(f"101st connection: {out}")
    assert out["outcome"] in ("reset", "eof") and out["ms"] < 500, out
    gauge = (f'hostmesh_endpoint_connections{{cluster="outbound|81||pool.shop.svc.cluster.local",'
             f'endpoint="{lab.pod("v1a")["ip"]}"}} 100')
    assert gauge in metrics(lab)
    assert traffic_dump(lab)["clusters"]["outbound|81||pool.shop.svc.cluster.local"]["active"] == 100
    Path(GO).touch()
    p.wait(10)
    wait_for(lambda: traffic_dump(lab)["clusters"]["outbound|81||pool.shop.svc.cluster.local"]["active"] == 0)
    wait_for(lambda: lab.stats(0).get("traffic_upstream_overflow", 0) == 1)
    time.sleep(1.2)  # the access log is flushed in batches
    uo = [x for x in lab.access_log(0) if x.get("response_flags") == "UO"]
    assert len(uo) == 1 and uo[0]["reason"].startswith("upstream_overflow"), uo
    delete_rules(lab)


OUTLIER = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: shop}}
spec:
  host: web
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN{locality}}}
    outlierDetection: {{consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 3s, maxEjectionPercent: 50}}
"""


def test_killed_endpoint_is_ejected_no_client_fails_and_it_comes_back(lab):
    lab.apply(OUTLIER.format(locality=""))
    before = lab.stats(0)
    kill(lab, "v1a")
    out = run_clients(lab, 300)
    stats = lab.stats(0)
    failures = stats.get("traffic_connect_failures", 0) - before.get("traffic_connect_failures", 0)
    ejections = stats.get("traffic_ejections", 0) - before.get("traffic_ejections", 0)
    print(f"v1a killed: {out['counts']}, client failures {len(out['fails'])}, connect failures {failures}, "
          f"ejections {ejections}")
    assert out["fails"] == [] and "v1a" not in out["counts"], out
    assert 2 <= failures <= 2 * ejections and ejections >= 1
    ej = traffic_dump(lab)["ejected"]
    assert [(e["endpoint"], e["reason"]) for e in ej] == [(lab.pod("v1a")["ip"], "consecutive_5xx")], ej
    assert f'hostmesh_endpoint_ejected{{cluster="outbound|80||web.shop.svc.cluster.local",endpoint="' \
           f'{lab.pod("v1a")["ip"]}",reason="consecutive_5xx"}} 1' in metrics(lab)
    # maxEjectionPercent 50 of 3: a second dead endpoint is not ejected (its failures are retried elsewhere)
    kill(lab, "v1b")
    out = run_clients(lab, 100)
    ej = traffic_dump(lab)["ejected"]
    print(f"v1b killed too: {out['counts']}, client failures {len(out['fails'])}, ejected {[e['endpoint'] for e in ej]}")
    assert out["fails"] == [] and set(out["counts"]) == {"v2"}, out
    assert lab.pod("v1b")["ip"] not in [e["endpoint"] for e in ej] and len(ej) <= 1, ej
    start(lab, "v1a")
    start(lab, "v1b")
    t0 = time.monotonic()
    wait_for(lambda: traffic_dump(lab)["ejected"] == [], timeout=20)
    print(f"ejection over {time.monotonic() - t0:.1f} s after the restart")
    out = run_clients(lab, 60)
    assert out["fails"] == [] and out["counts"].get("v1a", 0) >= 15, out
    delete_rules(lab)


def test_locality_same_zone_first_then_the_other_zone(lab):
    lab.apply(OUTLIER.format(locality=", localityLbSetting: {enabled: true}"))
    out = run_clients(lab, 50)
    assert out["counts"] == {"v1a": 50}, out
    kill(lab, "v1a")
    out = run_clients(lab, 100)
    print(f"zone za down: {out['counts']}")
    assert out["fails"] == [] and set(out["counts"]) == {"v1b", "v2"}, out
    start(lab, "v1a")
    delete_rules(lab)


# /flaky answers 503 to every second request; /slow503 answers 503 after 0.3 s, always
FLAKY = """
import http.server, itertools, threading, time
n = itertools.count()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path.startswith("/slow503"):
            time.sleep(0.3); code = 503
        else:
            code = 503 if next(n) % 2 else 200
        body = f"{code}\\n".encode()
        self.send_response(code)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer.daemon_threads = True
http.server.ThreadingHTTPServer(("0.0.0.0", 9100), H).serve_forever()
"""
RETRIES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.shop.svc.cluster.local]
  http:
    - match: [{uri: {prefix: /flaky}}, {uri: {prefix: /slow503}}]
      route: [{destination: {host: api}}]
      retries: {attempts: 2, retryOn: "503"}
    - match: [{uri: {exact: /plain}}]
      route: [{destination: {host: api}}]
      retries: {attempts: 0}
"""
HTTP_CLIENT = """
import json, urllib.request, urllib.error, concurrent.futures
def get(path):
    try:
        return urllib.request.urlopen(f"http://{ip}{{path}}", timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError as e:
        return str(e)
seq = [get("/flaky") for _ in range(100)]
plain = [get("/plain") for _ in range(20)]
with concurrent.futures.ThreadPoolExecutor(40) as ex:
    storm = list(ex.map(get, ["/slow503"] * 40))
print(json.dumps({{"seq": seq, "plain": plain, "storm": storm}}))
"""


def test_http_retries_hide_every_second_503_and_the_budget_stops_a_storm(lab):
    lab.apply(RETRIES)
    before = lab.stats(0)
    r = ns_py(lab.pod("client")["netns"], HTTP_CLIENT.format(ip=API_VIP), timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    stats = lab.stats(0)

    def delta(k):
        return stats.get(k, 0) - before.get(k, 0)

    print(f"/flaky: {sorted(set(out['seq']))} over 100, /plain: {out['plain'].count(503)} x 503 of 20, "
          f"storm: {out['storm'].count(503)} x 503 of 40, retries {delta('traffic_retries')}, "
          f"budget exhausted {delta('traffic_retry_budget_exhausted')}")
    assert out["seq"] == [200] * 100
    # and with curl, keep-alive: 20 requests on one connection, every one answered 200
    urls = [a for _ in range(20) for a in ("-o", "/dev/null", f"http://{API_VIP}/flaky")]
    r = ns_run(lab.pod("client")["netns"], "curl", "-s", "-w", "%{http_code} %{num_connects}\\n", *urls, timeout=60)
    codes = r.stdout.split()
    assert codes[0::2] == ["200"] * 20 and codes[1::2].count("1") == 1, r.stdout + r.stderr
    assert out["plain"].count(503) == 10  # no retries on that route: every second one is seen
    assert out["storm"] == [503] * 40
    assert delta("traffic_retry_budget_exhausted") > 0
    # 100 sequential requests: all but the first met a 503 first -> 99 retries; the storm's 40
    # requests could have made 80 more, the budget (20 % of live requests, at least 3) let fewer than 40 through
    assert 99 <= delta("traffic_retries") < 99 + 40
    delete_rules(lab)


def test_no_route_and_upstream_failure_are_flagged_on_the_records(lab):
    lab.apply(SUBSETS + "---\n" + SPLIT.format(v1=0, v2=100).replace("subset: v2", "subset: v9") + """---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pool, namespace: shop}
spec: {host: pool}
""")
    out = run_clients(lab, 3)
    assert len(out["fails"]) == 3, out  # subset v9 is defined nowhere: refused
    pool = next(p for p in lab.procs if "pool" in p.args)
    pool.kill()
    pool.wait()
    out = run_clients(lab, 2, ip=POOL_VIP, port=81)
    assert len(out["fails"]) == 2, out
    time.sleep(1.2)  # the access log is flushed in batches
    flags = [(x["response_flags"], x["reason"].split(":")[0], x["dst"]["port"]) for x in lab.access_log(0)
             if x.get("response_flags") and x["response_flags"] != "UO" and x["direction"] == "outbound"]
    print(f"flags: {flags}")
    assert flags.count(("NR", "no_route", 80)) == 3 and flags.count(("UF", "connect_failed", 9001)) == 2, flags
    delete_rules(lab)
