"""Two data-plane workers under one supervisor: the kernel spreads connections over both,
a killed worker is restarted and catches up while the other's connections carry on,
policies reach every worker, and stopping the supervisor stops its workers."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.lab.conftest import hm, lab_up, ns_run, wait_for

ECHO = """
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9000)); s.listen(64)
def serve(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# one long-lived connection: echoes a line every 0.1 s for `seconds`, prints how many came back
LONG = """
import socket, sys, time
s = socket.create_connection(("{ip}", 9000), 5)
s.settimeout(5)
ok = 0
t = time.monotonic()
while time.monotonic() - t < {seconds}:
    s.sendall(b"ping\\n")
    if s.recv(16) == b"ping\\n":
        ok += 1
    time.sleep(0.1)
    if ok == 1:
        print("up", flush=True)
print(ok, flush=True)
"""


def curl_codes(lab, src: str, dst: str, n: int) -> list[str]:
    url = f"http://{lab.pod(dst)['ip']}:8080/"
    return [ns_run(lab.pod(src)["netns"], "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5",
                   url).stdout for _ in range(n)]


def test_two_workers_share_the_load_survive_a_crash_and_follow_policies():
    with lab_up("twrk", "--nodes", "2", "--pods-per-node", "1") as lab:
        node0 = Path("/run/hostmesh/lab/twrk/node-0")
        assert hm("lab", "agent", "--name", "twrk", "node-0", "stop").returncode == 0
        cfg = yaml.safe_load((node0 / "config.yaml").read_text())
        cfg["dataplane"] = {"workers": 2, "engine": "epoll"}
        (node0 / "config.yaml").write_text(yaml.safe_dump(cfg))
        assert hm("lab", "agent", "--name", "twrk", "node-0", "start").returncode == 0
        status = lab.admin(0, "GET", "/v1/status")[1]
        procs = status["worker_processes"]
        assert status["workers"] == 2 and [p["ready"] for p in procs] == [True, True], status

        lab.serve_http("pod-0-0", 8080)
        lab.serve_http("pod-1-0", 8080)
        # inbound tunnels (node-1 -> node-0's :15008) and outbound captures (node-0's :15001)
        assert curl_codes(lab, "pod-1-0", "pod-0-0", 16) == ["200"] * 16
        assert curl_codes(lab, "pod-0-0", "pod-1-0", 16) == ["200"] * 16
        per_worker = [w["counters"].get("connections_established", 0)
                      for w in lab.admin(0, "GET", "/v1/stats")[1]["workers"]]
        assert sum(per_worker) == 32 and min(per_worker) > 0, per_worker  # both took some
        wait_for(lambda: b'reporter="destination"' in _metrics(lab))  # merged on :15020

        # a long connection lives on one worker; the other one is killed
        lab.spawn(lab.pod("pod-0-0")["netns"], sys.executable, "-c", ECHO)
        time.sleep(0.5)
        long = lab.spawn(lab.pod("pod-1-0")["netns"], sys.executable, "-u", "-c",
                         LONG.format(ip=lab.pod("pod-0-0")["ip"], seconds=6))
        assert long.stdout.readline().strip() == "up"
        conns = [c for c in lab.admin(0, "GET", "/v1/connections")[1] if c["dst"]["port"] == 9000]
        assert len(conns) == 1, conns
        holder = conns[0]["worker"]
        victim = procs[1 - holder]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: _worker(lab, 1 - holder)["restarts"] == 1 and _worker(lab, 1 - holder)["ready"])
        assert _worker(lab, 1 - holder)["pid"] != victim
        # new connections never fail while it is down or after: the kernel only picks
        # listeners that exist, and the new worker got the registry before it was ready
        assert curl_codes(lab, "pod-1-0", "pod-0-0", 12) == ["200"] * 12
        out, err = long.communicate(timeout=20)
        assert int(out.split()[-1]) >= 50, out + err  # ~60 echoes in 6 s, none lost to the crash

        # a policy applied through the supervisor binds every worker, the restarted one too
        deny = ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                "metadata: {name: no-web, namespace: default}\n"
                "spec: {action: DENY, selector: {matchLabels: {app: pod-0-0}}, rules: [{}]}\n")
        assert lab.admin(0, "PUT", "/v1/policies", deny)[0] == 200
        wait_for(lambda: lab.admin(0, "GET", "/v1/status")[1]["ready"])  # every worker synced
        assert set(curl_codes(lab, "pod-1-0", "pod-0-0", 12)) == {"000"}
        assert lab.admin(0, "DELETE", "/v1/policies/default/no-web")[0] == 200
        wait_for(lambda: lab.admin(0, "GET", "/v1/status")[1]["ready"])
        assert curl_codes(lab, "pod-1-0", "pod-0-0", 6) == ["200"] * 6

        # stopping the supervisor drains and stops both workers
        pids = [p["pid"] for p in lab.admin(0, "GET", "/v1/status")[1]["worker_processes"]]
        assert hm("lab", "agent", "--name", "twrk", "node-0", "stop").returncode == 0
        wait_for(lambda: not any(_alive(p) for p in pids), timeout=10)


def _worker(lab, i: int) -> dict:
    return lab.admin(0, "GET", "/v1/status")[1]["worker_processes"][i]


def _metrics(lab) -> bytes:
    r = subprocess.run(["ip", "netns", "exec", lab.node(0)["netns"], "curl", "-s", "http://127.0.0.1:15020/metrics"],
                       capture_output=True)
    return r.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    st = Path(f"/proc/{pid}/stat").read_text().split()
    return st[2] != "Z"


def test_an_agent_without_reusable_streams_still_talks_connect_with_one_that_has_them():
    """node-0 runs with dataplane.tunnel_streams: false (no ALPN hostmesh-streams/1):
    node-1's agent, which offers it, falls back to SPEC.md's CONNECT, one TLS connection
    per connection, both ways; node-1's own pods keep reusing nothing toward node-0."""
    with lab_up("tmix", "--nodes", "2", "--pods-per-node", "1") as lab:
        node0 = Path("/run/hostmesh/lab/tmix/node-0")
        assert hm("lab", "agent", "--name", "tmix", "node-0", "stop").returncode == 0
        cfg = yaml.safe_load((node0 / "config.yaml").read_text())
        cfg.setdefault("dataplane", {})["tunnel_streams"] = False
        (node0 / "config.yaml").write_text(yaml.safe_dump(cfg))
        assert hm("lab", "agent", "--name", "tmix", "node-0", "start").returncode == 0
        lab.serve_http("pod-0-0", 8080)
        lab.serve_http("pod-1-0", 8080)
        before = [lab.admin(i, "GET", "/v1/stats")[1]["tunnels"] for i in (0, 1)]
        assert curl_codes(lab, "pod-1-0", "pod-0-0", 8) == ["200"] * 8
        assert curl_codes(lab, "pod-0-0", "pod-1-0", 8) == ["200"] * 8
        after = [lab.admin(i, "GET", "/v1/stats")[1]["tunnels"] for i in (0, 1)]
        for b, a in zip(before, after, strict=True):
            assert a["streams"] == b["streams"] and a["reused"] == b["reused"], (b, a)
            assert a["handshakes"] - b["handshakes"] >= 8, (b, a)  # one per connection
