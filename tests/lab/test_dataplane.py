"""Data plane behaviour with real clients: VIP balancing and failover, many concurrent
connections, bounded memory behind a slow reader, drain with a replacement agent."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab.conftest import PY, lab_up, ns_py, wait_listen

TOPOLOGY = """\
nodes: 2
pods:
  - {name: a, namespace: app, node: 0}
  - {name: b, namespace: app, node: 1}
  - {name: c, namespace: app, node: 1}
  - {name: client, namespace: app, node: 0}
services:
  - {name: web, namespace: app, vip: 198.18.100.10, port: 80, target_port: 8080, endpoints: [a, b, c]}
"""
ECHO = """
import socket, threading
ls = socket.create_server(("0.0.0.0", {port}), backlog=4096)
def serve(c):
    with c:
        while True:
            d = c.recv(65536)
            if not d: return
            c.sendall(d)
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


@pytest.fixture(scope="module")
def dp(tmp_path_factory):
    with lab_up("tdp", topology=TOPOLOGY, tmp=tmp_path_factory.mktemp("dp")) as lab:
        for p in ("a", "b", "c"):
            lab.serve_http(p, 8080)
        yield lab


def test_vip_spreads_evenly_and_survives_an_endpoint_dying(dp):
    # each endpoint counts its own hits: use the access records of the destination side
    code = """
import urllib.request
ok = 0
for _ in range({n}):
    try:
        urllib.request.urlopen("http://198.18.100.10/", timeout=5).read(); ok += 1
    except Exception as e:
        print("fail", e)
print(ok)
"""
    r = ns_py(dp.pod("client")["netns"], code.format(n=30), timeout=120)
    assert r.stdout.strip().splitlines()[-1] == "30", r.stdout + r.stderr
    time.sleep(1.3)
    recs = [x for n in (0, 1) for x in dp.access_log(n)
            if x["type"] == "connection" and x["direction"] == "outbound" and x["dst"]["port"] == 8080]
    counts = {}
    for x in recs:
        counts[x["dst"]["workload"]] = counts.get(x["dst"]["workload"], 0) + 1
    assert sorted(counts) == ["a", "b", "c"] and max(counts.values()) - min(counts.values()) <= 1, counts
    # kill endpoint b's server: clients see no failure, new connections move to a and c
    for p in dp.procs:
        if dp.pod("b")["netns"] in p.args:
            p.kill()
    time.sleep(0.3)
    r = ns_py(dp.pod("client")["netns"], code.format(n=20), timeout=120)
    assert r.stdout.strip().splitlines()[-1] == "20", r.stdout + r.stderr


MANY = """
import socket, selectors, os, hashlib
N = {n}
socks = [socket.create_connection(("{ip}", 9500), 10) for _ in range(N)]
payload = [os.urandom(1024) for _ in range(N)]
for s, p in zip(socks, payload):
    s.sendall(p)
bad = 0
for s, p in zip(socks, payload):
    s.settimeout(20)
    got = b""
    while len(got) < len(p):
        d = s.recv(4096)
        if not d: break
        got += d
    bad += got != p
print(N, bad)
"""


def test_2000_concurrent_connections_all_bytes_correct(dp):
    b = dp.pod("b")
    dp.spawn(b["netns"], PY, "-c", ECHO.format(port=9500))
    wait_listen(b["netns"], 9500)
    r = ns_py(dp.pod("client")["netns"], "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))\n"
              + MANY.format(n=2000, ip=b["ip"]), timeout=240)
    assert r.stdout.split() == ["2000", "0"], r.stdout + r.stderr[-2000:]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_reader_keeps_agent_memory_bounded(dp):
    c = dp.pod("c")
    # c accepts and reads 1 MiB/s; the client sends as fast as it can for 8 s
    dp.spawn(c["netns"], PY, "-c", """
import socket, time
ls = socket.create_server(("0.0.0.0", 9600))
s, _ = ls.accept()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
while True:
    d = s.recv(65536)
    if not d: break
    time.sleep(len(d) / (1 << 20))
""")
    time.sleep(0.4)
    agents = [n["agent_pid"] for n in dp.status["nodes"]]
    before = [rss_kib(p) for p in agents]
    sender = dp.spawn(dp.pod("client")["netns"], PY, "-c", f"""
import socket, time
s = socket.create_connection(("{c['ip']}", 9600))
chunk = b"x" * (1 << 20)
t = time.monotonic()
sent = 0
s.settimeout(0.5)
while time.monotonic() - t < 8:
    try:
        s.send(chunk); sent += 1
    except socket.timeout:
        pass
print(sent)
""")
    peak = list(before)
    t0 = time.monotonic()
    while sender.poll() is None and time.monotonic() - t0 < 20:
        peak = [max(a, rss_kib(p)) for a, p in zip(peak, agents)]
        time.sleep(0.2)
    growth_mib = max(p - b for p, b in zip(peak, before)) / 1024
    assert growth_mib < 50, growth_mib


def test_sigterm_drains_and_a_replacement_takes_new_connections(dp):
    a = dp.pod("a")
    dp.spawn(a["netns"], PY, "-c", ECHO.format(port=9700))
    wait_listen(a["netns"], 9700)
    client_ns = dp.pod("b")["netns"]  # b is on node-1: its connections go through node-1's agent
    holder = subprocess.Popen(["ip", "netns", "exec", client_ns, PY, "-c", f"""
import socket, sys, time
socks = [socket.create_connection(("{a['ip']}", 9700), 5) for _ in range(100)]
print("open", flush=True)
sys.stdin.readline()            # the test says: the old agent is draining
bad = 0
for s in socks:
    try:
        s.settimeout(5); s.sendall(b"ping"); bad += s.recv(4) != b"ping"
    except OSError:
        bad += 1
print("live", bad, flush=True)
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "open"
    node1 = dp.node(1)
    old = node1["agent_pid"]
    os.kill(old, signal.SIGTERM)
    time.sleep(0.3)
    cfg = Path(node1["admin_socket"]).parent / "config.yaml"
    new = subprocess.Popen(["ip", "netns", "exec", node1["netns"], sys.executable, "-m", "agent", "run", "--config",
                            str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # while the old one drains, new connections keep working (served by either)
        r = ns_py(client_ns, f"""
import socket, time
refused = 0
t = time.monotonic()
while time.monotonic() - t < 3:
    try:
        s = socket.create_connection(("{a['ip']}", 9700), 3); s.sendall(b"x"); refused += s.recv(1) != b"x"; s.close()
    except OSError:
        refused += 1
    time.sleep(0.02)
print(refused)
""", timeout=30)
        assert r.stdout.strip() == "0", r.stdout + r.stderr
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().split() == ["live", "0"]  # none reset before the deadline (5 s)
    finally:
        holder.kill()
        new.send_signal(signal.SIGKILL)
        new.wait()
        try:
            os.kill(old, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(0.5)
        from tests.lab.conftest import hm

        hm("lab", "agent", "--name", dp.name, "node-1", "start")
        dp.refresh()
