"""A user-supplied ztunnel binary as the benchmark's extra path ``ztunnel``
(`hostmesh bench --ztunnel BIN`), in the same lab as ``direct`` and ``haproxy``.

One ztunnel per pod in its dedicated mode (NOTES.md "Running ztunnel as a peer"):
node-1's proxies the client pod, node-0's the server pod; no istiod (``XDS_ADDRESS=""``),
the workloads from a local file (``LOCAL_XDS_PATH``), certificates from ztunnel's fake CA
(``FAKE_CA=true``: a binary built with ``--features testing``; both ends trust its test
root). The lab's CA service is not used: it authenticates nodes by client certificate,
and ztunnel's CA client sends only a bearer token. Each ztunnel runs inside its pod's
namespace, as a sidecar would (``capture_rules``); tests/lab/test_ztunnel_peer.py runs
the same layout against hostmesh.

``check_binary``, ``local_xds``, ``environment`` and ``capture_rules`` are pure (no I/O
beyond ``check_binary``'s stat); ``ZtunnelPath`` runs them. The project ships no ztunnel
code and never builds one.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from agent.bench.lab import Lab

TRUST_DOMAIN = "cluster.local"
CLUSTER_ID = "Kubernetes"
OUTBOUND, HBONE = 15001, 15008
# ztunnel's own sockets (PACKET_MARK), left out of the pod's capture
MARK = 1337
CHAIN = "HOSTMESH_BENCH_ZT"


class ZtunnelError(ValueError):
    """The binary cannot be used (missing, not a file, not executable)."""


def check_binary(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise ZtunnelError(f"--ztunnel {path}: no such file")
    if not p.is_file():
        raise ZtunnelError(f"--ztunnel {path}: not a file")
    if not os.access(p, os.X_OK):
        raise ZtunnelError(f"--ztunnel {path}: not executable (chmod +x it)")
    return p.resolve()


def local_xds(pods: list[dict]) -> dict:
    """ztunnel's local workload file (camelCase, as its XDS types): every lab pod as an
    HBONE workload on its node. ``pods``: the lab status's pods (name, namespace,
    service_account, ip, node name).
    trustDomain and serviceAccount are set explicitly (the file path defaults them to "")."""
    workloads = []
    for p in pods:
        workloads.append({
            "uid": f"{CLUSTER_ID}//Pod/{p['namespace']}/{p['name']}",
            "name": p["name"],
            "namespace": p["namespace"],
            "serviceAccount": p["service_account"],
            "trustDomain": TRUST_DOMAIN,
            "workloadIps": [p["ip"]],
            "protocol": "HBONE",
            "node": p["node"],
            "canonicalName": p["name"],
            "workloadName": p["name"],
            "clusterId": CLUSTER_ID,
            # required by its LocalWorkload (service name -> port map); none here
            "services": {},
        })
    return {"workloads": workloads, "policies": [], "services": []}


def environment(pod: dict, node: str, xds_path: Path) -> dict[str, str]:
    """The variables of one dedicated-mode ztunnel proxying ``pod`` on ``node``."""
    return {
        "PROXY_MODE": "dedicated",
        "PROXY_WORKLOAD_INFO": f"{pod['namespace']}/{pod['name']}/{pod['service_account']}",
        "XDS_ADDRESS": "",
        "LOCAL_XDS_PATH": str(xds_path),
        "FAKE_CA": "true",
        "CA_ADDRESS": "",
        "CLUSTER_ID": CLUSTER_ID,
        "TRUST_DOMAIN": TRUST_DOMAIN,
        "NODE_NAME": node,
        "POD_NAME": pod["name"],
        "POD_NAMESPACE": pod["namespace"],
        "DNS_PROXY": "false",
        # dedicated mode runs in the node's namespace: its upstream legs keep the node's
        # own address (ztunnel's own dedicated-mode tests do the same), so replies need
        # no transparent-socket rule
        "ENABLE_ORIG_SRC": "false",
        "PACKET_MARK": str(MARK),
        "RUST_LOG": "warn",
    }


def capture_rules() -> list[list[str]]:
    """iptables commands for the client pod's namespace, where its ztunnel runs as a
    sidecar would: the pod's outbound TCP to :15001 (REDIRECT: ztunnel's outbound reads
    SO_ORIGINAL_DST), except ztunnel's own sockets (mark MARK) and loopback. The server
    pod needs none: its ztunnel owns the pod's :15008, so HBONE arrives on the pod's own
    address, which ztunnel checks against :authority (REDIRECT at the node rewrites it:
    "ip mismatch"). Own chain, so removal is a flush and a delete."""
    return [["iptables", "-t", "nat", "-N", CHAIN],
            ["iptables", "-t", "nat", "-A", CHAIN, "-p", "tcp", "-m", "mark", "--mark", str(MARK), "-j", "RETURN"],
            ["iptables", "-t", "nat", "-A", CHAIN, "-p", "tcp", "-d", "127.0.0.0/8", "-j", "RETURN"],
            ["iptables", "-t", "nat", "-A", CHAIN, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(OUTBOUND)],
            ["iptables", "-t", "nat", "-I", "OUTPUT", "-j", CHAIN]]


def remove_rules() -> list[list[str]]:
    return [["iptables", "-t", "nat", "-D", "OUTPUT", "-j", CHAIN],
            ["iptables", "-t", "nat", "-F", CHAIN], ["iptables", "-t", "nat", "-X", CHAIN]]


class ZtunnelPath:
    """Both ztunnels up, their capture in place; ``pids`` for CPU and memory."""

    def __init__(self, lab: Lab, work: Path, binary: Path) -> None:
        self.lab, self.work, self.binary = lab, work, binary
        self.pids: list[int] = []
        self._procs: list[subprocess.Popen] = []

    def _ns(self, netns: str, argv: list[str]) -> None:
        r = subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {netns}: {r.stderr.strip()}")

    def __enter__(self) -> ZtunnelPath:
        from agent.bench.lab import wait_port

        lab = self.lab
        xds = self.work / "ztunnel-local.yaml"
        xds.write_text(yaml.safe_dump(local_xds(lab.status["pods"]), sort_keys=False))
        cli, srv = lab.pod("cli"), lab.pod("srv")
        n0, n1 = lab.node(0), lab.node(1)
        names = [n0["name"], n1["name"]]
        try:
            for argv in capture_rules():
                self._ns(cli["netns"], argv)
            for node, pod in ((n0, srv), (n1, cli)):
                env = {**os.environ, **environment(pod, node["name"], xds)}
                log = open(self.work / f"ztunnel-{node['name']}.log", "wb")
                p = subprocess.Popen(["ip", "netns", "exec", pod["netns"], str(self.binary)], env=env,
                                     stdout=log, stderr=subprocess.STDOUT)
                self._procs.append(p)
            wait_port(lab, srv["netns"], srv["ip"], HBONE, timeout=20)
            wait_port(lab, cli["netns"], "127.0.0.1", OUTBOUND, timeout=20)
        except Exception as e:
            self.__exit__(None, None, None)
            logs = " | ".join((self.work / f"ztunnel-{n}.log").read_text(errors="replace")[-300:]
                              for n in names if (self.work / f"ztunnel-{n}.log").exists())
            raise RuntimeError(f"ztunnel did not start: {e}; log: {logs}") from None
        from agent.bench.lab import family

        self.pids = [q for p in self._procs for q in family(p.pid)]
        return self

    def __exit__(self, *exc) -> None:
        for p in self._procs:
            p.kill()
            p.wait()
        self._procs.clear()
        for argv in remove_rules():
            subprocess.run(["ip", "netns", "exec", self.lab.pod("cli")["netns"], *argv], capture_output=True,
                           timeout=30)
