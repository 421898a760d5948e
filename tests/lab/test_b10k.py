"""10,000 concurrent connections through two agents (native core), each byte-exact
(issue 16's fault list; issue 17's multiplexing makes them fit).

A client pod on node-1 opens 10,000 connections to an echo server in a pod on node-0,
through both agents' tunnel. Each connection sends its own payload and checks the echo;
once all 10,000 are open at the same time, the source node's TLS connections are
counted (``ss`` in node-1's namespace), then every connection sends a second payload,
checks it, half-closes and expects the server's EOF. Failures of any kind are counted
by name and must be 0; both agents must still be the same processes afterwards.

This machine caps a process at 20,000 file descriptors (no CAP_SYS_RESOURCE). A tunnel
with one TLS connection per connection costs each agent two descriptors per
connection, so 10,000 cannot fit: the test then xfails with the figures (only when the
cap, not something else, explains the failures). A multiplexed tunnel (HBONE) fits.
"""

import json
import re
import time
from pathlib import Path

import pytest

from agent.bench.parse import ss_peer_port_count
from tests.lab.conftest import PY, lab_up, ns_run, wait_listen

N = 10_000
PORT = 9100
SPARE = 200  # descriptors an agent holds besides its connections' (bounded, generous)
TOPOLOGY = """\
nodes: 2
pods:
  - {name: echo, namespace: tenk, service_account: echo, labels: {app: echo}, node: 0}
  - {name: cli, namespace: tenk, service_account: cli, labels: {app: cli}, node: 1}
"""
NOFILE = """\
import resource
_s, _h = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (_h, _h))
"""
SERVER = NOFILE + """\
import asyncio, sys

async def handle(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except OSError:
        pass
    finally:
        w.close()

async def main():
    srv = await asyncio.start_server(handle, "0.0.0.0", int(sys.argv[1]), backlog=4096, reuse_port=True)
    async with srv:
        await srv.serve_forever()

asyncio.run(main())
"""
CLIENT = NOFILE + """\
import asyncio, collections, hashlib, json, os, sys, time

host, port, n, marker, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
fail = collections.Counter()
state = {"open": 0, "done": 0, "ok": 0}
all_open = asyncio.Event()

def settled():
    state["done"] += 1
    if state["done"] >= n:
        all_open.set()

async def echoed(r, w, data, what):
    w.write(data)
    await w.drain()
    if await asyncio.wait_for(r.readexactly(len(data)), 60) == data:
        return True
    fail[what] += 1
    return False

async def one(i, sem):
    # a payload no other connection sends: its index and a digest of it
    payload = b"%05d:" % i + hashlib.sha256(b"%d" % i).digest() * 3
    counted = False
    try:
        async with sem:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 60)
            if not await echoed(r, w, payload, "mismatch"):
                return
        state["open"] += 1
        counted = True
        settled()
        await asyncio.wait_for(all_open.wait(), 180)
        while not os.path.exists(go):
            await asyncio.sleep(0.2)
        if not await echoed(r, w, payload[::-1] * 2, "mismatch_second"):
            return
        w.write_eof()
        if await asyncio.wait_for(r.read(), 60) != b"":
            fail["bytes_after_eof"] += 1
            return
        w.close()
        state["ok"] += 1
    except Exception as e:
        fail[type(e).__name__] += 1
    finally:
        if not counted:
            settled()

async def main():
    sem = asyncio.Semaphore(256)  # connections being set up at once
    t0 = time.monotonic()
    tasks = [asyncio.create_task(one(i, sem)) for i in range(n)]
    await all_open.wait()
    with open(marker + ".tmp", "w") as f:
        json.dump({"open": state["open"], "ramp_s": round(time.monotonic() - t0, 1), "fail": dict(fail)}, f)
    os.replace(marker + ".tmp", marker)
    await asyncio.gather(*tasks)
    print(json.dumps({"ok": state["ok"], "open": state["open"], "fail": dict(fail),
                      "total_s": round(time.monotonic() - t0, 1)}))

asyncio.run(main())
"""


def _fd_limit(pid: int) -> int:
    m = re.search(r"^Max open files\s+(\d+)", Path(f"/proc/{pid}/limits").read_text(), re.M)
    return int(m.group(1)) if m else 0


@pytest.mark.slow
def test_ten_thousand_concurrent_connections_byte_exact(tmp_path):
    name = "b10k"
    with lab_up(name, topology=TOPOLOGY, tmp=tmp_path) as lab:
        try:
            pids = [n["agent_pid"] for n in lab.status["nodes"]]
            assert all(pids), lab.status["nodes"]
            (tmp_path / "server.py").write_text(SERVER)
            (tmp_path / "client.py").write_text(CLIENT)
            echo, cli = lab.pod("echo"), lab.pod("cli")
            lab.spawn(echo["netns"], PY, str(tmp_path / "server.py"), str(PORT))
            wait_listen(echo["netns"], PORT)
            marker, go = tmp_path / "all-open.json", tmp_path / "go"
            client = lab.spawn(cli["netns"], PY, str(tmp_path / "client.py"), echo["ip"], str(PORT), str(N),
                               str(marker), str(go))
            deadline = time.monotonic() + 150
            while not marker.exists() and time.monotonic() < deadline and client.poll() is None:
                time.sleep(0.5)
            assert marker.exists(), (client.poll(), client.stderr.read() if client.poll() is not None else "")
            peak = json.loads(marker.read_text())
            ss = ns_run(lab.node(1)["netns"], "ss", "-Htn", "state", "established")
            tls = ss_peer_port_count(ss.stdout, [15008])
            go.write_text("")
            out, err = client.communicate(timeout=180)
            assert client.returncode == 0, err[-2000:]
            got = json.loads(out.strip().splitlines()[-1])
            lab.refresh()
            assert [n["agent_pid"] for n in lab.status["nodes"]] == pids, "an agent died or was replaced"
            figures = f"{got}; at peak {peak}; {tls} TLS connections from node-1"
            limit = min(_fd_limit(p) for p in pids)
            # the descriptors short: 2 per connection plus the agent's own (listeners, eventfd,
            # admin, logs: under SPARE); only resets, no more than that many, are the cap's doing
            short = 2 * N + SPARE - limit
            if got["fail"] and tls > 100 and short > 0 and set(got["fail"]) == {"ConnectionResetError"} \
                    and sum(got["fail"].values()) <= short:
                pytest.xfail(f"one TLS connection per connection: each agent needs 2 x {N} descriptors, this machine "
                             f"caps a process at {limit}; {figures}")
            assert got["fail"] == {} and got["ok"] == N, figures
            assert peak["open"] == N, figures
        finally:  # also when it fails or xfails: no holder outlives the lab
            lab.stop_procs()
