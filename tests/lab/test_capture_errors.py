"""Capture's bad-input paths and the netlink link watcher, for real.

Each error case runs ``hostmesh capture install`` (and ``hostmesh doctor``) against a
scratch network namespace and then proves nothing was half-applied: no nft table, no
iptables chain, no policy-routing rule. A missing binary is a PATH without it; a kernel
without TPROXY is a real binary behind a wrapper that fails the way the kernel does when
nft_tproxy / xt_TPROXY cannot load (the module cannot be unloaded on a shared host).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.lab.conftest import PY, lab_up, ns_run

NFT_NO_TPROXY = """#!/bin/sh
# nft as on a kernel without nft_tproxy: any ruleset using tproxy is refused
input=$(/bin/cat)
case "$input" in *tproxy*)
  echo "Error: Could not process rule: No such file or directory" >&2
  exit 1;;
esac
printf '%s\\n' "$input" | exec {nft} "$@"
"""

IP6T_NO_TPROXY = """#!/bin/sh
echo "ip6tables-restore v1.8.9 (nf_tables): Couldn't load target \\`TPROXY':No such file or directory" >&2
exit 1
"""


def _bin_dir(tmp_path: Path, keep: list[str], fakes: dict[str, str] | None = None) -> str:
    d = tmp_path / "bin"
    d.mkdir()
    for name in keep:
        os.symlink(shutil.which(name), d / name)
    for name, text in (fakes or {}).items():
        (d / name).write_text(text)
        (d / name).chmod(0o755)
    return str(d)


def _hostmesh(path: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=path)
    return subprocess.run([PY, "-m", "agent", *args], capture_output=True, text=True, env=env, timeout=120)


def _untouched(ns: str, iptables: bool = False) -> None:
    ruleset = ns_run(ns, "nft", "list", "ruleset").stdout
    if iptables:  # iptables-nft leaves its empty built-in tables behind; no rule of ours
        assert "hostmesh" not in ruleset.lower() and "tproxy" not in ruleset.lower(), ruleset
        assert all(line.strip().startswith(("table", "chain", "type", "}")) for line in ruleset.splitlines()
                   if line.strip()), ruleset
    else:
        assert ruleset.strip() == ""
    for fam in ("-4", "-6"):
        assert "fwmark" not in ns_run(ns, "ip", fam, "rule").stdout
    for tool in ("iptables-save", "ip6tables-save"):
        assert "HOSTMESH" not in ns_run(ns, tool).stdout


def test_unknown_backend_is_refused_with_nothing_applied(scratch_ns, tmp_path):
    r = _hostmesh(os.environ["PATH"], "capture", "install", "--backend", "pf", "--netns", scratch_ns)
    assert r.returncode != 0 and "unknown backend 'pf'" in r.stderr and "nftables or iptables" in r.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text("node: {name: n0, address: 10.0.0.1}\ncapture:\n  backend: pf\n")
    r = _hostmesh(os.environ["PATH"], "capture", "install", "--config", str(cfg), "--netns", scratch_ns)
    assert r.returncode != 0 and f"{cfg}:3" in r.stderr and "backend" in r.stderr, r.stderr
    r = _hostmesh(os.environ["PATH"], "doctor", "--config", str(cfg))
    assert r.returncode == 2 and f"{cfg}:3" in r.stderr, r.stderr
    _untouched(scratch_ns)


def test_missing_nft_binary_is_a_clear_error_from_install_and_doctor(scratch_ns, tmp_path):
    path = _bin_dir(tmp_path, ["ip"])
    r = _hostmesh(path, "capture", "install", "--netns", scratch_ns)
    assert r.returncode == 1 and "nft not found: install the nftables package" in r.stderr, r.stderr
    _untouched(scratch_ns)
    r = _hostmesh(path, "doctor", "--json")
    assert r.returncode == 1
    assert "[FAIL] nft binary not found" in _hostmesh(path, "doctor").stdout


def test_kernel_without_tproxy_is_named_and_nothing_is_half_applied(scratch_ns, tmp_path):
    path = _bin_dir(tmp_path, ["ip", "iptables-restore", "iptables", "ip6tables", "iptables-save",
                               "ip6tables-save"],
                    {"nft": NFT_NO_TPROXY.format(nft=shutil.which("nft")), "ip6tables-restore": IP6T_NO_TPROXY})
    r = _hostmesh(path, "capture", "install", "--netns", scratch_ns)
    assert r.returncode == 1 and "TPROXY" in r.stderr, r.stderr
    _untouched(scratch_ns)
    # iptables: IPv4 goes in, IPv6 fails -> the IPv4 part is taken back
    r = _hostmesh(path, "capture", "install", "--backend", "iptables", "--netns", scratch_ns)
    assert r.returncode == 1 and "TPROXY" in r.stderr, r.stderr
    _untouched(scratch_ns, iptables=True)
    out = _hostmesh(path, "doctor").stdout
    assert "[FAIL] kernel refuses nft tproxy/socket rules" in out and "nft_tproxy" in out, out


def test_a_vanished_pod_interface_unregisters_its_workload():
    with lab_up("tlink", "--nodes", "1", "--pods-per-node", "2") as lab:
        n0 = lab.node(0)["netns"]
        gone, kept = lab.pod("pod-0-0"), lab.pod("pod-0-1")
        uids = {w["name"]: w["uid"] for w in lab.admin(0, "GET", "/v1/workloads")[1]}
        assert set(uids) == {"pod-0-0", "pod-0-1"}
        assert gone["ip"] in ns_run(n0, "nft", "list", "set", "inet", "hostmesh", "pods4").stdout
        # the CNI deleting a pod: its node-side veth goes away (and with it the route)
        assert ns_run(n0, "ip", "link", "del", "h-0").returncode == 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            names = {w["name"] for w in lab.admin(0, "GET", "/v1/workloads")[1]}
            if names == {"pod-0-1"}:
                break
            time.sleep(0.05)
        assert names == {"pod-0-1"}
        pods4 = ns_run(n0, "nft", "list", "set", "inet", "hostmesh", "pods4").stdout
        assert gone["ip"] not in pods4 and kept["ip"] in pods4
        assert lab.stats(0).get("workloads_removed_link_gone") == 1
        # the other pod's interface is untouched and it still gets captured
        assert ns_run(n0, "ip", "link", "show", "h-1").returncode == 0
        # the watcher lives in the agent's own process: no helper beside it to linger
        pid = lab.node(0)["agent_pid"]
        assert Path(f"/proc/{pid}/task/{pid}/children").read_text().split() == []
        # and it keeps watching: the second pod's interface goes too
        assert ns_run(n0, "ip", "link", "del", "h-1").returncode == 0
        deadline = time.monotonic() + 3
        while lab.admin(0, "GET", "/v1/workloads")[1] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lab.admin(0, "GET", "/v1/workloads")[1] == []
