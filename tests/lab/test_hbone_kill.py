"""Issue 17's bad input, hostmesh as the HBONE client: ONE TLS connection carrying 1,000
streams, killed. Python's ``h2`` plays a ztunnel-like server in web's namespace
(tests/lab/hbone_peer.py) advertising 1,001 concurrent streams (ztunnel's 200 would
split them), echoing each stream itself. The lab runs with ``--capture-fail open`` and
node-1's agent stopped, so web's :15008 is the peer. 1,000 pod connections from the
client pod on node-0 ride node-0's agent's one pooled TLS connection; then the peer is
killed (SIGKILL: the kernel closes the socket, no close_notify, no GOAWAY). Every pod
connection must end (reset: the bytes may be cut short, never a clean EOF) within a few
seconds, each with an access-log record naming why (``tunnel_lost``); the core's live
connections, HBONE connections and pool go back to zero, the agent's open fds to what
they were before; a new connection afterwards opens a new TLS connection and works."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.lab import hbone_peer as hp
from tests.lab.conftest import PY, wait_for, wait_listen

TOPOLOGY = """\
nodes: 2
pods:
  - {name: client, namespace: front, service_account: client-sa, labels: {app: client}, node: 0}
  - {name: web, namespace: shop, service_account: web-sa, labels: {app: web}, node: 1}
"""
APP = 7000
N = 1000
WEB_ID = "spiffe://cluster.local/ns/shop/sa/web-sa"
# N connections from the client pod, each echoed once (its stream is up end to end); the
# first one alone, so the peer's SETTINGS (1,001 streams) are known before the rest come.
# Prints {"ready": N}, then waits for every connection to end and prints how they ended.
DIAL = """
import json, resource, selectors, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = []
def one(i):
    s = socket.create_connection((host, port), 10)
    s.settimeout(15)
    s.sendall(b"ping %d\\n" % i)
    socks.append(s)
one(0)
assert socks[0].recv(100) == b"ping 0\\n"
for i in range(1, n):
    one(i)
for i, s in enumerate(socks[1:], 1):
    want = b"ping %d\\n" % i
    got = b""
    while len(got) < len(want) and (x := s.recv(100)):
        got += x
    assert got == want, (i, got)
print(json.dumps({"ready": len(socks), "nofile": [soft, hard]}), flush=True)
sel = selectors.DefaultSelector()
for s in socks:
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
ends = {"eof": 0, "reset": 0, "data": 0}
last = None
deadline = time.monotonic() + 60
while sel.get_map() and time.monotonic() < deadline:
    for key, _ in sel.select(1):
        s = key.fileobj
        try:
            how = "data" if s.recv(100) else "eof"
        except ConnectionResetError:
            how = "reset"
        ends[how] += 1
        if how != "data":
            sel.unregister(s)
            s.close()
            last = time.time()
print(json.dumps({"ends": ends, "open": len(sel.get_map()), "last_end": last}), flush=True)
"""


def start_peer(lab):
    web = lab.pod("web")["netns"]
    p = lab.spawn(web, PY, "-m", "tests.lab.hbone_peer", "server",
                  json.dumps({"port": 15008, "chain": lab.chain, "key": lab.key, "max_streams": N + 1,
                              "echo": True, "bundle": f"/run/hostmesh/lab/{lab.name}/ca/bundle.pem",
                              "log": lab.peer_log}))
    wait_listen(web, 15008)
    return p


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("skill")
    with hp.server_lab("skill", TOPOLOGY, tmp, WEB_ID) as lab:
        lab.refresh()
        yield lab


def peer_conns(lab) -> list[dict]:
    return [e for e in map(json.loads, Path(lab.peer_log).read_text().splitlines()) if "alpn" in e]


def engine(lab) -> dict:
    return lab.admin(0, "GET", "/v1/stats")[1]["engine"]


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def nofile(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/limits").read_text().splitlines() if x.startswith("Max open files"))
    return int(line.split()[3])


def test_a_killed_tls_connection_with_1000_streams_ends_every_one_and_leaks_nothing(lab):
    peer = start_peer(lab)
    web = lab.pod("web")["ip"]
    pid = lab.node(0)["agent_pid"]
    # the agent may hold 1,000 pod sockets and more (run.py raises its soft limit)
    assert nofile(pid) >= 4 * N, nofile(pid)
    fds_before, before = fds(pid), engine(lab)
    assert (before["connections"], before["hbone_pooled"], before["hbone_connections"]) == (0, 0, 0), before
    dial = lab.spawn(lab.pod("client")["netns"], PY, "-c",
                     f"import sys; sys.argv=['', {web!r}, {APP}, {N}]\n" + DIAL)
    ready = dial.stdout.readline()
    assert ready, dial.stderr.read()[-3000:]
    assert json.loads(ready)["ready"] == N
    # all 1,000 on one TLS connection, from one pooled client connection
    up = engine(lab)
    assert (up["connections"], up["hbone_connections"], up["hbone_pooled"]) == (N, 1, 1), up
    assert up["hbone_streams_opened"] - before.get("hbone_streams_opened", 0) == N
    assert len(peer_conns(lab)) == 1
    assert fds(pid) >= fds_before + N
    killed = time.time()
    peer.kill()
    peer.wait()
    out = json.loads(dial.stdout.readline())
    # every pod connection ended, as a reset (a lost tunnel is never a clean EOF), within seconds
    assert out["ends"] == {"eof": 0, "reset": N, "data": 0} and out["open"] == 0, out
    assert out["last_end"] - killed < 5, out
    # nothing left: live connections, HBONE connections, the pool, Python's table, fds
    wait_for(lambda: (engine(lab)["connections"], engine(lab)["hbone_connections"], engine(lab)["hbone_pooled"])
             == (0, 0, 0), 10)
    assert engine(lab)["open"] == 0
    wait_for(lambda: lab.admin(0, "GET", "/v1/connections")[1] == [], 10)
    wait_for(lambda: fds(pid) == fds_before, 10)
    # each stream's record says why it ended

    def lost():
        return [r for r in lab.access_log(0) if r.get("type") == "connection" and r["dst"].get("port") == APP
                and r.get("reason") == "tunnel_lost (destination)"]
    wait_for(lambda: len(lost()) == N, 15)
    assert engine(lab).get("hbone_client_connection_error", 0) == before.get("hbone_client_connection_error", 0) + 1
    # a new connection afterwards opens a new TLS connection and works
    start_peer(lab)
    again = lab.spawn(lab.pod("client")["netns"], PY, "-c", f"import sys; sys.argv=['', {web!r}, {APP}, 1]\n" + DIAL)
    assert json.loads(again.stdout.readline())["ready"] == 1, again.stderr.read()[-2000:]
    assert len(peer_conns(lab)) == 2
    assert engine(lab)["hbone_connections_opened"] == up["hbone_connections_opened"] + 1
    again.kill()
