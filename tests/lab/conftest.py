"""Lab fixtures: real namespaces, real agents, real clients. Every lab a test makes is
removed by its fixture, also when the test fails."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

PY = sys.executable
MESH_TOPOLOGY = """\
nodes: 2
pods:
  - {name: web, namespace: shop, service_account: web-sa, labels: {app: web}, node: 0, http_ports: [8080]}
  - {name: db, namespace: data, service_account: db-sa, labels: {app: db}, node: 0}
  - {name: client, namespace: front, service_account: client-sa, labels: {app: client}, node: 1}
  - {name: other, namespace: other, service_account: other-sa, labels: {app: other}, node: 1}
"""


def hm(*args: str, timeout: float = 120, check: bool = False, input: str | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([PY, "-m", "agent", *args], capture_output=True, text=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise AssertionError(f"hostmesh {' '.join(args)} failed ({r.returncode}): {r.stderr}")
    return r


def ns_run(netns: str, *cmd: str, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True, timeout=timeout,
                          input=input)


def ns_py(netns: str, code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return ns_run(netns, PY, "-c", code, timeout=timeout)


class Lab:
    def __init__(self, name: str) -> None:
        self.name = name
        self.procs: list[subprocess.Popen] = []
        self.refresh()

    def refresh(self) -> None:
        self.status = json.loads(hm("lab", "status", "--name", self.name, "--json", check=True).stdout)

    def pod(self, name: str) -> dict:
        return next(p for p in self.status["pods"] if p["name"] == name)

    def node(self, i: int) -> dict:
        return self.status["nodes"][i]

    def spawn(self, netns: str, *cmd: str) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", netns, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        self.procs.append(p)
        return p

    def serve_http(self, pod: str, port: int = 8080) -> None:
        ns = self.pod(pod)["netns"]
        self.spawn(ns, PY, "-m", "agent.lab.httpd", "--port", str(port), "--bind", "::")
        wait_listen(ns, port)

    def admin(self, node: int, method: str, path: str, body=None):
        from agent.admin.client import AdminClient

        return AdminClient(self.node(node)["admin_socket"]).request(method, path, body)

    def stats(self, node: int) -> dict:
        return self.admin(node, "GET", "/v1/stats")[1]["counters"]

    def apply(self, text: str) -> None:
        p = Path(f"/run/hostmesh/lab/{self.name}/policy-{time.monotonic_ns()}.yaml")
        p.write_text(text)
        hm("lab", "apply", "--name", self.name, str(p), check=True)

    def clear_policies(self) -> None:
        for i in range(len(self.status["nodes"])):
            for pol in self.admin(i, "GET", "/v1/policies")[1]:
                self.admin(i, "DELETE", f"/v1/policies/{pol['namespace']}/{pol['name']}")

    def access_log(self, node: int) -> list[dict]:
        log = Path(self.node(node)["admin_socket"]).parent / "agent.log"
        return json_lines(log.read_text(errors="replace"), '{"type":')

    def stop_procs(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs.clear()


def json_lines(text: str, prefix: str = "{") -> list[dict]:
    """The JSON documents among a log's lines that start with ``prefix``.

    The agent may be part-way through writing its last line when a test reads the
    log: only lines that end in a newline count."""
    whole = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in whole.splitlines() if line.startswith(prefix)]


def wait_for(pred, timeout: float = 15) -> None:
    """Poll ``pred`` every 0.1 s until it holds; one last check asserts it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    assert pred()


def wait_listen(netns: str, port: int, host: str = "127.0.0.1", timeout: float = 10) -> None:
    code = f"import socket; socket.create_connection(('{host}', {port}), 1).close()"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ns_py(netns, code).returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {host}:{port} in {netns}")


@contextmanager
def lab_up(name: str, *args: str, topology: str | None = None, tmp: Path | None = None):
    hm("lab", "down", "--name", name)
    extra = list(args)
    if topology is not None:
        f = (tmp or Path("/tmp")) / f"topo-{name}.yaml"
        f.write_text(topology)
        extra += ["--topology", str(f)]
    r = hm("lab", "up", "--name", name, *extra, timeout=120)
    try:
        assert r.returncode == 0, r.stderr
        lab = Lab(name)
        yield lab
        lab.stop_procs()
    finally:
        hm("lab", "down", "--name", name)


@pytest.fixture
def scratch_ns():
    """A throwaway network namespace with loopback up, deleted after the test."""
    ns = f"hm-t-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns])


@pytest.fixture(scope="session")
def mesh(tmp_path_factory):
    """One 2-node lab with agents, shared by the mesh tests (building it costs ~2 s)."""
    with lab_up("tmesh", topology=MESH_TOPOLOGY, tmp=tmp_path_factory.mktemp("mesh")) as lab:
        lab.serve_http("web", 8080)
        lab.serve_http("db", 9090)
        yield lab
