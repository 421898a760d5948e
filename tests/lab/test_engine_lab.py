"""The epoll engine between two network namespaces joined by a veth, with real
processes: client (ns a) -> relay process with the engine (ns a) -> server (ns b).

2,000 concurrent connections with all bytes correct; a slow reader keeps the relay's
RSS growth under 50 MiB; 1 GiB each way at once with sha256 equal. Each namespace this
file creates is named hm-eng-* and removed by the fixture, also on failure."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
A_IP, B_IP = "198.18.250.1", "198.18.250.2"
RELAY_PORT, SERVER_PORT = 17001, 17002

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

PRELUDE = """
import hashlib, json, os, resource, socket, sys, time
import trio
_h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (_h, _h))

async def sendall(s, data):
    v = memoryview(data)
    while v:
        v = v[await s.send(v):]
"""

RELAY = PRELUDE + """
from types import SimpleNamespace
from agent.proxy.engine import open_engine
from agent.proxy.sockets import connect, make_listener
host, port, up_host, up_port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

async def one(eng, s, n):
    a = socket.socket(fileno=s.detach())
    b = await connect((up_host, up_port), timeout=10)
    eng.add(a, b, conn_id=n, tag="lab")

async def main():
    ls = trio.socket.from_stdlib_socket(make_listener(host, port, transparent=False))
    async with open_engine(SimpleNamespace(buffer_bytes=256 * 1024, idle_timeout_s=300)) as eng:
        print("ready", flush=True)
        n = 0
        async with trio.open_nursery() as nursery:
            while True:
                s, _ = await ls.accept()
                n += 1
                nursery.start_soon(one, eng, s, n)
trio.run(main)
"""

# mode echo: send back what arrives; mode push N: send N MiB as fast as possible;
# mode bulk N: send N MiB while hashing what arrives, print the sha256 of it.
SERVER = PRELUDE + """
mode, size = sys.argv[3], int(sys.argv[4])
CHUNK = (bytes(range(256)) * 4096)  # 1 MiB, a known pattern

async def handle(s):
    with s:
        if mode == "echo":
            while (d := await s.recv(65536)):
                await sendall(s, d)
        elif mode == "push":
            try:
                for _ in range(size):
                    await sendall(s, CHUNK)
            except OSError:
                pass
        else:
            h = hashlib.sha256()
            async def rx():
                while (d := await s.recv(262144)):
                    h.update(d)
            async with trio.open_nursery() as n:
                n.start_soon(rx)
                for _ in range(size):
                    await sendall(s, CHUNK)
                s.shutdown(socket.SHUT_WR)
            print(json.dumps({"server_got": h.hexdigest()}), flush=True)

async def main():
    ls = trio.socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await ls.bind((sys.argv[1], int(sys.argv[2])))
    ls.listen(4096)
    print("ready", flush=True)
    async with trio.open_nursery() as n:
        while True:
            s, _ = await ls.accept()
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            n.start_soon(handle, s)
trio.run(main)
"""

CLIENT_MANY = PRELUDE + """
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ok = bad = opened = 0

async def one(i, gate):
    global ok, bad, opened
    s = trio.socket.socket()
    await s.connect((host, port))
    opened += 1
    if opened == count:
        gate.set()
    await gate.wait()  # every connection is open at once before bytes flow
    data = hashlib.sha256(str(i).encode()).digest() * 256  # 8 KiB, unique per connection
    await sendall(s, data)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while (d := await s.recv(65536)):
        got += d
    s.close()
    if got == data:
        ok += 1
    else:
        bad += 1

async def main():
    gate = trio.Event()
    async with trio.open_nursery() as n:
        for i in range(count):
            n.start_soon(one, i, gate)
trio.run(main)
print(json.dumps({"ok": ok, "bad": bad}))
"""

CLIENT_SLOW = PRELUDE + """
host, port, conns, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
got = [0] * conns

async def one(i):
    s = trio.socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    await s.connect((host, port))
    start = trio.current_time()
    while trio.current_time() - start < seconds:
        d = await s.recv(65536)
        got[i] += len(d)
        await trio.sleep(len(d) / (1 << 20))  # 1 MiB/s
    s.close()

async def main():
    async with trio.open_nursery() as n:
        for i in range(conns):
            n.start_soon(one, i)
trio.run(main)
print(json.dumps({"got": got}))
"""

CLIENT_BULK = PRELUDE + """
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
CHUNK = (bytes(range(256)) * 4096)[::-1]
h = hashlib.sha256()
sent = hashlib.sha256()

async def main():
    s = trio.socket.socket()
    await s.connect((host, port))
    async def rx():
        while (d := await s.recv(262144)):
            h.update(d)
    async with trio.open_nursery() as n:
        n.start_soon(rx)
        for _ in range(size):
            sent.update(CHUNK)
            await sendall(s, CHUNK)
        s.shutdown(socket.SHUT_WR)
trio.run(main)
print(json.dumps({"client_got": h.hexdigest(), "client_sent": sent.hexdigest()}))
"""


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def nets():
    tag = uuid.uuid4().hex[:6]
    a, b = f"hm-eng-{tag}-a", f"hm-eng-{tag}-b"
    procs: list[subprocess.Popen] = []
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
        for ns, dev, ip in ((a, "va", A_IP), (b, "vb", B_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield a, b, procs
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def start(procs, ns: str, code: str, *args: object) -> subprocess.Popen:
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *map(str, args)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(p)
    line = p.stdout.readline()
    assert line.strip() == "ready", p.stderr.read()
    return p


def run(ns: str, code: str, *args: object, timeout: float = 60) -> dict:
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, *map(str, args)],
                       cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def relay_to(procs, a: str, b: str, mode: str, size: int = 0) -> subprocess.Popen:
    start(procs, b, SERVER, B_IP, SERVER_PORT, mode, size)
    return start(procs, a, RELAY, A_IP, RELAY_PORT, B_IP, SERVER_PORT)


def test_2000_concurrent_connections_all_bytes_correct(nets):
    a, b, procs = nets
    relay_to(procs, a, b, "echo")
    assert run(a, CLIENT_MANY, A_IP, RELAY_PORT, 2000, timeout=90) == {"ok": 2000, "bad": 0}


def test_slow_readers_keep_relay_rss_growth_under_50_mib(nets):
    a, b, procs = nets
    relay = relay_to(procs, a, b, "push", 4096)
    before = rss_kib(relay.pid)
    peak = [before]
    client = subprocess.Popen(["ip", "netns", "exec", a, sys.executable, "-c", CLIENT_SLOW, A_IP,
                               str(RELAY_PORT), "20", "6"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    procs.append(client)
    while client.poll() is None:
        peak.append(rss_kib(relay.pid))
        time.sleep(0.2)
    got = json.loads(client.stdout.read().strip().splitlines()[-1])["got"]
    growth_mib = (max(peak) - before) / 1024
    print(f"relay RSS {before / 1024:.1f} MiB -> peak {max(peak) / 1024:.1f} MiB; growth {growth_mib:.1f} MiB")
    # the servers push 4 GiB each; the readers took ~1 MiB/s for 6 s
    assert all(3 << 20 < g < 10 << 20 for g in got), got
    assert growth_mib < 50


def test_1_gib_each_way_at_once_sha256_equal(nets):
    a, b, procs = nets
    relay_to(procs, a, b, "bulk", 1024)
    t0 = time.monotonic()
    res = run(a, CLIENT_BULK, A_IP, RELAY_PORT, 1024, timeout=120)
    elapsed = time.monotonic() - t0
    server_line = json.loads(procs[0].stdout.readline())  # procs: server, relay
    h, chunk = hashlib.sha256(), bytes(range(256)) * 4096
    for _ in range(1024):
        h.update(chunk)
    expected_from_server = h.hexdigest()
    assert res["client_got"] == expected_from_server
    assert server_line["server_got"] == res["client_sent"]
    print(f"2 GiB through the relay in {elapsed:.1f} s ({2 * 1024 / elapsed:.0f} MiB/s total)")
