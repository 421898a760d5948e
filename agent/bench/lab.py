"""The benchmark's view of a lab: bring one up with `hostmesh lab`, run commands in its
pods and nodes, read its agents' CPU and memory from /proc. The shell around the lab
CLI; measurements live in ``scenarios``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from agent.bench.parse import proc_cpu_seconds, proc_rss_kib

# Only the L7 port is declared HTTP: an HTTP rule on a workload has every declared HTTP
# port of it inspected (rbac.needs_http is per workload), and http-1000rps measures L4.
TOPOLOGY = """\
nodes: 2
pods:
  - {name: srv, namespace: bench, service_account: srv, labels: {app: srv}, node: 0, http_ports: [8081]}
  - {name: cli, namespace: bench, service_account: cli, labels: {app: cli}, node: 1}
  - {name: cli0, namespace: bench, service_account: cli0, labels: {app: cli0}, node: 0}
"""


def hm(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"hostmesh {' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r


class Lab:
    def __init__(self, name: str, work: Path, agents: bool) -> None:
        self.name, self.work, self.agents = name, work, agents
        self.status: dict = {}
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Lab:
        hm("lab", "down", "--name", self.name, check=False)
        self.work.mkdir(parents=True, exist_ok=True)
        topo = self.work / "topology.yaml"
        topo.write_text(TOPOLOGY)
        args = ["lab", "up", "--name", self.name, "--topology", str(topo)]
        if not self.agents:
            args.append("--no-agent")
        hm(*args)
        self.refresh()
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        hm("lab", "down", "--name", self.name, check=False)

    def refresh(self) -> None:
        self.status = json.loads(hm("lab", "status", "--name", self.name, "--json").stdout)

    def pod(self, name: str) -> dict:
        return next(p for p in self.status["pods"] if p["name"] == name)

    def node(self, i: int) -> dict:
        return self.status["nodes"][i]

    def run(self, netns: str, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True, timeout=timeout)

    def spawn(self, netns: str, *cmd: str, log: Path | None = None) -> subprocess.Popen:
        out = open(log, "wb") if log else subprocess.DEVNULL
        p = subprocess.Popen(["ip", "netns", "exec", netns, *cmd], stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def agent_pids(self) -> list[int]:
        self.refresh()
        pids = []
        for n in self.status["nodes"]:
            if n.get("agent_pid"):
                pids += family(n["agent_pid"])
        return pids


def family(pid: int) -> list[int]:
    """A process and all its descendants (worker processes count toward the agent)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def cpu_seconds(pids: list[int]) -> float:
    tck = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in pids:
        try:
            total += proc_cpu_seconds(Path(f"/proc/{p}/stat").read_text(), tck)
        except OSError:
            pass
    return total


def rss_mib(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            total += proc_rss_kib(Path(f"/proc/{p}/status").read_text())
        except (OSError, ValueError):
            pass
    return total / 1024.0


def wait_port(lab: Lab, netns: str, ip: str, port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    code = f"import socket; socket.create_connection(('{ip}', {port}), 1).close()"
    while time.monotonic() < deadline:
        if lab.run(netns, sys.executable, "-c", code, timeout=5).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {ip}:{port} in {netns}")
