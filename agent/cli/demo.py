"""`hostmesh demo`: a narrated tour on a real 2-node lab, with a pass/fail mark per step.

Builds the lab, serves HTTP in one pod, requests it from a pod on the other node through
the mesh, shows what the server saw, applies a DENY policy and shows the refusal, shows
the telemetry of those connections, measures a short iperf3 transfer, tears down. Exits
non-zero if any step failed. Every step drives the same commands an operator would.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAB = "demo"
TOPOLOGY = """\
nodes: 2
pods:
  - {name: web, namespace: shop, service_account: web-sa, labels: {app: web}, node: 0, http_ports: [8080]}
  - {name: client, namespace: frontend, service_account: client-sa, labels: {app: client}, node: 1}
  - {name: intruder, namespace: other, service_account: intruder-sa, labels: {app: intruder}, node: 1}
"""
DENY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-intruder, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
    - from: [{source: {principals: ["cluster.local/ns/other/sa/intruder-sa"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin-path, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
    # ports: without it, a DENY with HTTP-only fields also denies web's TCP ports (Istio's
    # rule, docs/policy.md), and the iperf3 step below would be refused
    - to: [{operation: {ports: ["8080"], paths: ["/admin*"]}}]
"""

GREEN, RED, DIM, BOLD, RESET = "\033[32m", "\033[31m", "\033[2m", "\033[1m", "\033[0m"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="a narrated demo on a 2-node lab (needs root)")
    p.add_argument("--keep", action="store_true", help="leave the lab up at the end")
    p.set_defaults(func=cmd_demo)


class Demo:
    def __init__(self) -> None:
        self.failed = 0
        self.tty = sys.stdout.isatty()

    def c(self, color: str, text: str) -> str:
        return f"{color}{text}{RESET}" if self.tty else text

    def say(self, text: str) -> None:
        print(f"\n{self.c(BOLD, '==>')} {text}", flush=True)

    def detail(self, text: str) -> None:
        for line in text.rstrip().splitlines():
            print(f"    {self.c(DIM, line)}", flush=True)

    def mark(self, ok: bool, text: str) -> bool:
        print(f"  {self.c(GREEN, '[PASS]') if ok else self.c(RED, '[FAIL]')} {text}", flush=True)
        if not ok:
            self.failed += 1
        return ok


def hm(*args: str, check: bool = False, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "agent", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check, input=input)


def in_pod(pod: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return hm("lab", "exec", "--name", LAB, pod, "--", *cmd, timeout=timeout)


def cmd_demo(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("hostmesh demo needs root (it builds network namespaces)", file=sys.stderr)
        return 2
    d = Demo()
    work = Path(tempfile.mkdtemp(prefix="hostmesh-demo-"))
    (work / "topology.yaml").write_text(TOPOLOGY)
    (work / "deny.yaml").write_text(DENY)
    hm("lab", "down", "--name", LAB)
    servers: list[subprocess.Popen] = []
    try:
        run_steps(d, work, servers)
    except subprocess.TimeoutExpired as e:
        d.mark(False, f"timed out: {' '.join(map(str, e.cmd))[:120]}")
    finally:
        for s in servers:
            s.terminate()
        if not args.keep:
            d.say("Tearing the lab down")
            r = hm("lab", "down", "--name", LAB)
            d.mark(r.returncode == 0, "lab down" + ("" if r.returncode == 0 else f": {r.stderr.strip()}"))
    print()
    if d.failed:
        print(d.c(RED, f"demo finished with {d.failed} failed step(s)"))
        return 1
    print(d.c(GREEN, "demo finished: every step passed"))
    return 0


def run_steps(d: Demo, work: Path, servers: list) -> None:
    d.say("Building a 2-node lab: node namespaces on an underlay, pods on routed veths, an agent per node")
    t0 = time.monotonic()
    r = hm("lab", "up", "--name", LAB, "--topology", str(work / "topology.yaml"), timeout=180)
    d.detail(r.stdout or r.stderr)
    if not d.mark(r.returncode == 0, f"lab up in {time.monotonic() - t0:.1f} s"):
        return
    status = json.loads(hm("lab", "status", "--name", LAB, "--json", check=True).stdout)
    pods = {p["name"]: p for p in status["pods"]}
    web, client = pods["web"], pods["client"]
    url = f"http://{web['ip']}:8080"

    d.say(f"Starting an HTTP server in pod web ({web['ip']}, {web['identity']})")
    servers.append(subprocess.Popen(
        [sys.executable, "-m", "agent", "lab", "exec", "--name", LAB, "web", "--", sys.executable, "-m",
         "agent.lab.httpd", "--port", "8080", "--bind", "0.0.0.0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    servers.append(subprocess.Popen(
        [sys.executable, "-m", "agent", "lab", "exec", "--name", LAB, "web", "--", "iperf3", "-s", "-p", "5201"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    ok = False
    for _ in range(50):
        if in_pod("web", "curl", "-s", "-o", "/dev/null", "http://127.0.0.1:8080/").returncode == 0:
            ok = True
            break
        time.sleep(0.1)
    d.mark(ok, "server listening on :8080")

    d.say(f"Pod client (node-1, {client['identity']}) requests {url}/hello through the mesh")
    r = in_pod("client", "curl", "-s", "-m", "5", f"{url}/hello")
    seen = {}
    try:
        seen = json.loads(r.stdout)
    except ValueError:
        pass
    d.detail(f"curl exit {r.returncode}; server answered: {r.stdout.strip()[:300]}")
    d.mark(r.returncode == 0 and seen.get("path") == "/hello", "HTTP 200 across nodes, inside an mTLS tunnel")
    saw = str(seen.get("client", "")).removeprefix("::ffff:").rsplit(":", 1)[0]
    d.mark(saw == client["ip"], f"the server saw the client pod's own IP ({saw or '?'}), not a node address")

    d.say("Applying two DENY policies: one for principal other/intruder-sa, one for paths /admin*")
    d.detail((work / "deny.yaml").read_text())
    r = hm("lab", "apply", "--name", LAB, str(work / "deny.yaml"))
    d.mark(r.returncode == 0, "policies in force on every agent" + ("" if r.returncode == 0 else f": {r.stderr.strip()}"))
    r = in_pod("intruder", "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", f"{url}/hello")
    d.detail(f"intruder: curl exit {r.returncode}, status {r.stdout or '-'}")
    d.mark(r.returncode != 0 or r.stdout.strip() not in ("200",), "intruder is refused at the destination (DENY by SPIFFE principal)")
    r = in_pod("client", "curl", "-s", "-m", "5", "-w", "\n%{http_code}", f"{url}/admin/users")
    code = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "-"
    d.detail(f"client GET /admin/users: {r.stdout.strip()[:200]}")
    d.mark(code == "403", "an L7 DENY on the path answers 403 with the policy's name")
    r = in_pod("client", "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", f"{url}/hello")
    d.mark(r.stdout.strip() == "200", "the same client still gets 200 on an allowed path")

    d.say("Telemetry: the connection records and Istio-standard metrics the agents produced")
    node0 = status["nodes"][0]
    r = hm("ctl", "--socket", node0["admin_socket"], "stats", "--json")
    stats = {}
    try:
        stats = json.loads(r.stdout)
    except ValueError:
        pass
    counters = stats.get("counters", {})
    d.detail(json.dumps({k: v for k, v in counters.items() if "connection" in k or "policy" in k or "tunnel" in k}, indent=1)[:1200])
    d.mark(counters.get("connections_closed", 0) >= 1, "node-0's agent counted the tunnelled connections")
    log = Path(node0["admin_socket"]).parent / "agent.log"

    def connection_records() -> list[str]:
        if not log.exists():
            return []
        return [ln for ln in log.read_text(errors="replace").splitlines()
                if '"type": "connection"' in ln or '"type":"connection"' in ln]

    records, deadline = connection_records(), time.monotonic() + 5
    while not records and time.monotonic() < deadline:  # records are written on the telemetry tick (1 s)
        time.sleep(0.2)
        records = connection_records()
    for ln in records[-3:]:
        d.detail(ln[:400])
    d.mark(len(records) >= 1, f"{len(records)} connection record(s) in node-0's access log")

    d.say("A short iperf3 transfer through the mesh (client on node-1 -> web on node-0)")
    r = in_pod("client", "iperf3", "-c", web["ip"], "-p", "5201", "-t", "3", "-J", timeout=40)
    try:
        gbit = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
        d.mark(gbit > 0, f"{gbit:.2f} Gbit/s through two agents and an mTLS tunnel")
    except (ValueError, KeyError):
        d.detail(r.stdout[-400:] + r.stderr[-400:])
        d.mark(False, "iperf3 transfer")
