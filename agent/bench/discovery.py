"""The ``discovery`` benchmark: the agent's own Kubernetes discovery (start, first
list, watches, apply) against the fake API server serving a synthetic cluster
(``agent.bench.cluster``) of 1,000 / 5,000 / 20,000 pods.

The agent runs in a child process (its RSS and CPU are its own); the parent serves the
API, sends the events the child asks for and probes the child's ``/healthz/live`` like
the kubelet. Metrics per size: ``sync_s`` (start to every pod in the registry),
``rss_mib`` and ``kib_per_pod`` (after the sync, over the agent before it listed),
``relist_peak_mib`` (peak RSS while a ``410 Gone`` relist of the pods runs),
``event_p50_ms``/``event_p99_ms`` (an event sent to the state holding it, at 50 events/s),
``cpu_ms_per_event`` (one isolated relevant event: a pod label, an endpoint, a policy),
``cpu_ms_per_irrelevant_event`` (a pod status change discovery ignores), ``probe_p99_ms``
(``/healthz/live`` under 50 events/s) and ``loop_stall_max_ms`` (the longest the trio
loop did not run). It measures; it never changes what it measures.

``python -m agent.bench.discovery --pods 1000 5000`` runs it alone (no lab, no root).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from agent.bench.cluster import THIS_NODE, Cluster
from agent.bench.fakeapi import KIND_PATHS, FakeApi, Serialised

LOAD_RATE, LOAD_S = 50, 10
MIX = ["status", "pod", "status", "pod", "status", "slice", "status", "pod", "status", "pod"] * 5
MIX[-1] = "policy"  # 2% policy changes, 10% endpoints, 38% pod changes, 50% status-only


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The parent's side: the fake API for one cluster plus the control routes."""

    def __init__(self, pods: int) -> None:
        self.cluster = Cluster(pods)
        self.lock = threading.Lock()
        self.seq = 0
        self.api = FakeApi()
        self.load: dict = {"done": True, "sent": [], "probes": []}
        for kind, items in self.cluster.lists().items():
            path, list_kind = KIND_PATHS[kind]
            self.api.lists[path] = [Serialised(list_kind, items, str(self.cluster.rv))]
        self.api.extra = self.control

    def send(self, what: str) -> tuple[str, bool]:
        with self.lock:
            self.seq += 1
            kind, line, rv = self.cluster.event(what, self.seq)
        path = KIND_PATHS[kind][0]
        deadline = time.monotonic() + 30
        while not self.api.watchers(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.api.publish(path, line)
        return rv, what != "status"

    def control(self, method: str, path: str, q: dict):
        if not path.startswith("/bench/"):
            return None
        if path == "/bench/send":
            def later():
                time.sleep(float(q.get("delay", 0)))
                for _ in range(int(q.get("count", 1))):
                    self.send(q["what"])
            with self.lock:
                rv = self.cluster.rv + int(q.get("count", 1))  # the last event's version
            threading.Thread(target=later, daemon=True).start()
            return 200, {"rv": str(rv)}
        if path == "/bench/load" and method == "POST":
            self.load = {"done": False, "sent": [], "probes": []}
            threading.Thread(target=self._load, args=(int(q["port"]),), daemon=True).start()
            return 200, {}
        if path == "/bench/load":
            return 200, self.load
        if path == "/bench/gone":
            pods_path, list_kind = KIND_PATHS["pods"]
            with self.lock:
                rv = self.cluster.next_rv()
                items = [self.cluster.pod(i) for i in range(self.cluster.n)]
            self.api.lists[pods_path] = [Serialised(list_kind, items, rv)]
            self.api.publish(pods_path, json.dumps({"type": "ERROR", "object": {
                "kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}}).encode())
            self.api.close_watches(pods_path)
            return 200, {"rv": rv}
        return 404, {"message": "unknown"}

    def _load(self, port: int) -> None:
        stop = threading.Event()

        def probe():
            while not stop.is_set():
                t = time.monotonic()
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz/live", timeout=2) as r:
                        r.read()
                    self.load["probes"].append((time.monotonic() - t) * 1000)
                except OSError:
                    self.load["probes"].append(2000.0)  # the DaemonSet's probe timeout: a miss
                time.sleep(max(0.0, 0.1 - (time.monotonic() - t)))

        threading.Thread(target=probe, daemon=True).start()
        start = time.monotonic()
        for k in range(LOAD_RATE * LOAD_S):
            time.sleep(max(0.0, start + k / LOAD_RATE - time.monotonic()))
            what = MIX[k % len(MIX)]
            t = time.monotonic()
            rv, relevant = self.send(what)
            self.load["sent"].append((rv, t, relevant))
        time.sleep(0.5)
        stop.set()
        self.load["done"] = True


def run_size(pods: int, progress=print) -> dict:
    srv = Server(pods)
    try:
        cmd = [sys.executable, "-m", "agent.bench.discovery", "child", "--api", srv.api.url, "--pods", str(pods),
               "--port", str(_free_port())]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=360 + pods / 40)
        if r.returncode != 0:
            raise RuntimeError(f"discovery child failed ({r.returncode}): {r.stderr[-2000:]}")
        for line in r.stderr.splitlines():
            if "cpu ms per event" in line:  # the CPU breakdown (by kind, by thread), for whoever reads the run
                progress(f"  {pods} pods: {line}")
        return json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        srv.api.close()


def scenario(sizes: list[int], progress=print) -> list[dict]:
    """Result rows (``agent.bench.scenarios.row`` shape), one set per cluster size."""
    rows = []
    for n in sizes:
        res = run_size(n, progress)
        for metric, value in res.items():
            rows.append({"scenario": f"discovery-{n}", "path": "hostmesh", "metric": metric,
                         "value": round(float(value), 3)})
        progress(f"  discovery {n} pods: " + ", ".join(f"{k}={v:.3g}" for k, v in res.items()))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.bench.discovery")
    sub = p.add_subparsers(dest="cmd")
    c = sub.add_parser("child")
    c.add_argument("--api", required=True)
    c.add_argument("--pods", type=int, required=True)
    c.add_argument("--port", type=int, required=True)
    p.add_argument("--pods", type=int, nargs="+", default=[1000, 5000])
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    if args.cmd == "child":
        from agent.bench.discovery_child import child

        print(json.dumps(child(args.api, args.pods, args.port)), flush=True)
        return 0
    rows = scenario(args.pods)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


__all__ = ["THIS_NODE", "scenario", "run_size"]

if __name__ == "__main__":
    sys.exit(main())
