"""Istio's own dashboards on hostmesh's metrics, through a real Prometheus.

A 2-node lab with ``--prometheus`` (Debian's prometheus scraping both agents every
second with a ztunnel DaemonSet's target labels), a traffic mix whose every byte and
status the clients count themselves — HTTP through a VIP service with 200s and 403s
(an L7 deny, also inside one keep-alive connection), plaintext from outside the mesh,
same-node and cross-node, TCP with asymmetric payloads, a long-lived connection still
open at query time, L4 denials — then:
- the counters agree with the clients: requests by response code per reporter,
  request/response bytes, TCP bytes each way, connections opened/closed/failed;
- every query of the four dashboards in ../shared/vectors/istio-dashboards/ (174 panel
  queries and 12 template-variable queries), variables filled the way Grafana fills
  them from the lab's workloads and services, runs as Grafana runs it (a range query
  over the traffic, $__rate_interval = 4 scrapes) and returns data — except the panels
  listed in IMPOSSIBLE, each with the reason it cannot have data by design.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from tests.lab import dashboards as dash
from tests.lab.conftest import PY, lab_up, ns_run, wait_for, wait_listen

pytestmark = pytest.mark.lab

TOPOLOGY = """\
nodes: 2
pods:
  - {name: web-0, namespace: shop, service_account: web, labels: {app: web, version: v1}, node: 0, http_ports: [8080]}
  - {name: web-1, namespace: shop, service_account: web, labels: {app: web, version: v2}, node: 1, http_ports: [8080]}
  - {name: db-0, namespace: data, service_account: db, labels: {app.kubernetes.io/name: db}, node: 0, http_ports: [8080]}
  - {name: db-1, namespace: data, service_account: db, labels: {app.kubernetes.io/name: db}, node: 1, http_ports: [8080]}
  - {name: client-0, namespace: front, service_account: client, labels: {app: client}, node: 0}
  - {name: client-1, namespace: front, service_account: client, labels: {app: client}, node: 1}
services:
  - {name: web, namespace: shop, vip: 10.96.0.10, port: 80, target_port: 8080, endpoints: [web-0, web-1]}
  - {name: db, namespace: data, vip: 10.96.0.20, port: 80, target_port: 8080, endpoints: [db-0, db-1]}
  - {name: db-tcp, namespace: data, vip: 10.96.0.21, port: 5432, target_port: 9000, endpoints: [db-0, db-1]}
"""
POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{to: [{operation: {ports: ["8080"], paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-9001, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{to: [{operation: {ports: ["9001"]}}]}]
"""
WEB = "web.shop.svc.cluster.local"
ROUNDS = 6
DB_TCP = "db-tcp.data.svc.cluster.local"
# A TCP server that answers every chunk twice: request and response directions differ.
DOUBLER = """\
import socketserver
class H(socketserver.BaseRequestHandler):
    def handle(self):
        while d := self.request.recv(65536):
            self.request.sendall(d + d)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("0.0.0.0", 9000), H).serve_forever()
"""
TCP_CLIENT = """\
import socket, sys, time
host, port, n, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.create_connection((host, port), 5)
s.sendall(b"x" * n)
got = 0
while got < 2 * n:
    d = s.recv(65536)
    if not d:
        break
    got += len(d)
print(got, flush=True)
time.sleep(hold)
s.close()
"""
QUERY_RUNNER = """\
import json, sys, urllib.parse, urllib.request
base, reqs = json.load(sys.stdin)
out = []
for path, params in reqs:
    url = base + path + "?" + urllib.parse.urlencode(params)
    out.append(json.load(urllib.request.urlopen(url, timeout=30)))
print(json.dumps(out))
"""
# Panels that cannot have data by design (query text fragment -> why).
IMPOSSIBLE = {
    "container_memory_working_set_bytes": "cAdvisor's per-container memory, reported by the kubelet, not by the node "
                                          "proxy; the lab has no kubelet",
    "container_cpu_usage_seconds_total": "cAdvisor's per-container CPU, reported by the kubelet; the lab has no "
                                         "kubelet",
    "istio_dns_requests_total": "ztunnel's DNS proxy; hostmesh has none (pods resolve names themselves)",
    "istio_xds_connection_terminations_total": "ztunnel's xDS client; hostmesh reads its state from configuration or "
                                               "the Kubernetes API, never from istiod over xDS",
    "istio_xds_message_total": "ztunnel's xDS client; hostmesh has no xDS stream",
    'destination_principal!~"spiffe.*", source_workload_namespace=~"$namespace", source_workload=~"$workload", '
    'reporter="source"': "a source-reported request to a destination without a SPIFFE identity: hostmesh parses "
                         "HTTP only on ports a mesh workload declares as HTTP (http_ports), and every mesh workload "
                         "has a SPIFFE identity",
}


class Prom:
    def __init__(self, lab) -> None:
        self.netns = lab.status["external"]["netns"]
        self.base = lab.status["prometheus"]["url"]

    def batch(self, reqs: list[tuple[str, dict]]) -> list[dict]:
        r = ns_run(self.netns, PY, "-c", QUERY_RUNNER, input=json.dumps([self.base, reqs]), timeout=120)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        bad = [(q, o) for q, o in zip(reqs, out) if o.get("status") != "success"]
        assert not bad, bad[:3]
        return [o["data"]["result"] for o in out]

    def instant(self, *exprs: str) -> list[list[dict]]:
        return self.batch([("/api/v1/query", {"query": e}) for e in exprs])

    def value(self, expr: str) -> float:
        res = self.instant(expr)[0]
        return float(res[0]["value"][1]) if res else 0.0

    def by(self, expr: str, label: str) -> dict:
        return {s["metric"].get(label, ""): float(s["value"][1]) for s in self.instant(expr)[0]}


def curl(lab, pod_or_netns: str, *urls: str) -> list[dict]:
    """One curl (one keep-alive connection for several URLs); per URL the status and
    the bytes curl itself counted."""
    netns = lab.pod(pod_or_netns)["netns"] if not pod_or_netns.startswith("hm-") else pod_or_netns
    w = '{"code":%{http_code},"req":%{size_request},"head":%{size_header},"body":%{size_download}}\\n'
    r = ns_run(netns, "curl", "-s", "-m", "5", "-w", w, *[a for u in urls for a in ("-o", "/dev/null", u)])
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def tcp(lab, netns: str, host: str, port: int, n: int) -> int:
    r = ns_run(netns, PY, "-c", TCP_CLIENT, host, str(port), str(n), "0")
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def refused(netns: str, host: str, port: int) -> None:
    r = ns_run(netns, PY, "-c", f"import socket; s=socket.create_connection(('{host}', {port}), 5); "
                                "s.sendall(b'x'); print(len(s.recv(10)))")
    assert r.returncode != 0 or r.stdout.strip() == "0", r.stdout  # reset (or closed) by the agent


def test_istio_dashboards_have_data_and_agree_with_the_clients(tmp_path):
    with lab_up("ddash", "--prometheus", topology=TOPOLOGY, tmp=tmp_path) as lab:
        assert lab.status["prometheus"]["url"] == "http://198.18.0.254:9090"
        run_dir = Path(lab.node(0)["admin_socket"]).parents[1]
        for p in ("web-0", "web-1", "db-0", "db-1"):
            lab.serve_http(p, 8080)
        for p in ("web-0", "db-0", "db-1"):
            lab.spawn(lab.pod(p)["netns"], PY, "-c", DOUBLER)
            wait_listen(lab.pod(p)["netns"], 9000)
        lab.apply(POLICY)
        prom = Prom(lab)
        ext = lab.status["external"]["netns"]
        web0 = lab.pod("web-0")["ip"]
        t0 = time.time()

        # HTTP through the web VIP from both nodes: 200s, 403s, and a keep-alive
        # connection carrying 200, 403, 200 (flags per request, not per connection)
        seen: dict[str, list[dict]] = {"client-0": [], "client-1": []}
        from_web = []  # web-0 as a client too: HTTP to the db VIP (same node and across)
        for rnd in range(ROUNDS):  # spread over several scrapes: irate panels need two samples apart
            for i in range(3):
                from_web += curl(lab, "web-0", f"http://10.96.0.20/q-{rnd}{i}")
            for c in seen:
                seen[c] += curl(lab, c, f"http://10.96.0.10/ok-{rnd}a")
                seen[c] += curl(lab, c, f"http://10.96.0.10/ok-{rnd}b")
                if rnd < 3:
                    seen[c] += curl(lab, c, f"http://10.96.0.10/admin/{rnd}")
            time.sleep(0.5)
        for c in seen:
            seen[c] += curl(lab, c, "http://10.96.0.10/a", "http://10.96.0.10/admin/x", "http://10.96.0.10/b")
        plain = curl(lab, ext, *[f"http://{web0}:8080/plain-{i}" for i in range(3)])  # outside the mesh
        # and TCP to the db-tcp VIP (one connection long-lived)
        web_ns = lab.pod("web-0")["netns"]
        long_lived = lab.spawn(web_ns, PY, "-c", TCP_CLIENT, "10.96.0.21", "5432", "5000", "600")
        assert int(long_lived.stdout.readline()) == 10000
        tcp_got = [tcp(lab, web_ns, "10.96.0.21", 5432, 1000) for _ in range(4)]
        assert tcp_got == [2000] * 4
        for netns in (lab.pod("client-0")["netns"], lab.pod("client-1")["netns"], ext):
            for _ in range(2):
                assert tcp(lab, netns, web0, 9000, 700) == 1400
        for netns in (lab.pod("client-1")["netns"], lab.pod("client-1")["netns"], lab.pod("client-0")["netns"]):
            refused(netns, web0, 9001)
        time.sleep(1.0)
        for c in seen:  # traffic in the last scrapes too, so irate panels end with data
            seen[c] += curl(lab, c, "http://10.96.0.10/tail")

        codes = {c: [x["code"] for x in xs] for c, xs in seen.items()}
        assert all(cs.count(200) == 2 * ROUNDS + 3 and cs.count(403) == 4 for cs in codes.values()), codes
        assert [x["code"] for x in plain] == [200] * 3 and [x["code"] for x in from_web] == [200] * 3 * ROUNDS

        # ---- the counters agree with the clients ------------------------------------
        web_dst = f'reporter="destination", destination_service="{WEB}"'
        web_src = f'reporter="source", destination_service="{WEB}"'
        ok = 2 * (2 * ROUNDS + 3)  # both clients' 200s
        wait_for(lambda: prom.value(f"sum(istio_requests_total{{{web_dst}}})") == ok + 3 + 8
                 and prom.value(f"sum(istio_requests_total{{{web_src}}})") == ok + 8, timeout=20)
        assert prom.by(f"sum by (response_code) (istio_requests_total{{{web_dst}}})", "response_code") == {
            "200": ok + 3.0, "403": 8.0}
        assert prom.by(f"sum by (response_code) (istio_requests_total{{{web_src}}})", "response_code") == {
            "200": float(ok), "403": 8.0}
        # Envoy's RBAC answers 403 with flags "-"; the keep-alive connection's 200s stay "-"
        assert prom.by(f"sum by (response_flags) (istio_requests_total{{{web_dst}}})", "response_flags") == {
            "-": ok + 11.0}
        for reporter in ("source", "destination"):
            for c in seen:
                sel = f'reporter="{reporter}", source_workload="{c}"'
                assert prom.value(f"sum(istio_request_bytes_sum{{{sel}}})") == sum(x["req"] for x in seen[c])
                assert prom.value(f"sum(istio_response_bytes_sum{{{sel}}})") == sum(x["head"] + x["body"]
                                                                                   for x in seen[c])
                assert prom.value(f"sum(istio_request_duration_milliseconds_count{{{sel}}})") == len(seen[c])
        assert prom.value(f'sum(istio_requests_total{{{web_dst}, source_workload="unknown", '
                          'connection_security_policy="unknown"})') == 3
        # TCP: Istio's received = towards the server (1000), sent = back (2000)
        db_src = f'reporter="source", source_workload="web-0", destination_service="{DB_TCP}"'
        db_dst = f'reporter="destination", source_workload="web-0", destination_service="{DB_TCP}"'

        def long_lived_counted() -> bool:
            return prom.value(f"sum(istio_tcp_sent_bytes_total{{{db_dst}}})") == 2000 * 4 + 10000

        wait_for(long_lived_counted, timeout=10)  # the open connection's bytes, before it ends
        for sel in (db_src, db_dst):
            assert prom.value(f"sum(istio_tcp_received_bytes_total{{{sel}}})") == 1000 * 4 + 5000
            assert prom.value(f"sum(istio_tcp_sent_bytes_total{{{sel}}})") == 2000 * 4 + 10000
            assert prom.value(f"sum(istio_tcp_connections_opened_total{{{sel}}})") == 5
            assert prom.value(f"sum(istio_tcp_connections_closed_total{{{sel}}})") == 4
        echo = 'destination_workload="web-0", reporter="destination", source_workload!="web-0"'
        assert prom.value(f"sum(istio_tcp_received_bytes_total{{{echo}, destination_service=\"unknown\"}})") == 700 * 6
        assert prom.value(f"sum(istio_tcp_sent_bytes_total{{{echo}, destination_service=\"unknown\"}})") == 1400 * 6
        for reporter in ("source", "destination"):
            assert prom.by(f'sum by (response_flags) (istio_tcp_connections_failed_total{{reporter="{reporter}", '
                           'destination_workload="web-0"})', "response_flags") == {"DENY": 3.0}
        assert prom.value('sum(istio_tcp_sockets_open{reporter="source"})') >= 1
        assert prom.value('sum(istio_build{component="ztunnel"})') == 2

        # ---- every dashboard query --------------------------------------------------
        end = time.time() + 1
        chosen = {"namespace": "shop", "workload": "web-0", "service": WEB}
        empty: list[tuple[dash.Query, str]] = []
        ran = var_queries = 0
        four_xx = None
        for file in dash.FILES:
            vars_ = dash.variables(file)
            for qrep in ("destination", "source"):
                values: dict[str, str] = {}
                for v in vars_:
                    if v.kind == "datasource":
                        continue
                    if v.kind == "custom":
                        values[v.name] = dash.format_value([qrep] if v.name == "qrep" else list(v.options), v.multi)
                        continue
                    inner = dash.interpolate(dash.inner_query(v.query), values, "4s")
                    got = dash.query_result_values(prom.instant(inner)[0], v.regex)
                    var_queries += 1
                    assert got, f"{file}: variable {v.name} has no values ({inner})"
                    if v.name in chosen:
                        assert chosen[v.name] in got, (v.name, got)
                        values[v.name] = chosen[v.name]
                    else:  # "All"
                        values[v.name] = dash.format_value(got, True)
                qs = [q for q in dash.queries(file) if qrep == "destination" or "$qrep" in q.expr]
                if not qs:
                    continue
                res = prom.batch([("/api/v1/query_range", {"query": dash.interpolate(q.expr, values, "4s"),
                                                           "start": t0 - 5, "end": end, "step": 1}) for q in qs])
                for q, series in zip(qs, res):
                    ran += 1
                    finite = [float(x) for s in series for _, x in s["values"] if math.isfinite(float(x))]
                    if not finite:
                        empty.append((q, qrep))
                    if q.panel == "4xxs":
                        four_xx = max(finite)
        why = {(q.name, qrep): next((r for frag, r in IMPOSSIBLE.items() if frag in q.expr), None)
               for q, qrep in empty}
        print(f"\ndashboard queries run: {ran} (panel queries, twice where $qrep applies) + {var_queries} "
              f"variable queries; {len(empty)} without data:")
        for (name, qrep), reason in sorted(why.items()):
            print(f"  - {name} (qrep={qrep}): {reason or 'NO REASON: a regression'}")
        scrapes = prom.by(f"count_over_time(up[{int(end - t0) + 5}s])", "pod")
        slowest = prom.by(f"max_over_time(scrape_duration_seconds[{int(end - t0) + 5}s])", "pod")
        assert all(why.values()), ([k for k, r in why.items() if r is None], scrapes, slowest)
        assert len(empty) == 6  # the five ztunnel-only panels and the non-SPIFFE destination one
        assert four_xx and four_xx > 0  # 403s were served: the mesh dashboard's 4xx panel shows them

        # the long-lived connection ends: closed catches up with opened
        long_lived.kill()
        long_lived.wait()
        wait_for(lambda: prom.value(f"sum(istio_tcp_connections_closed_total{{{db_src}}})") == 5, timeout=15)
        pid = json.loads(Path(run_dir / "state.json").read_text())["prometheus"]["pid"]
    # lab down removed Prometheus and its storage
    assert not run_dir.exists()
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]

