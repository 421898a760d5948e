"""A newcomer's first hour (issue 21), for real: doctor's nft probe OK and FAIL, doctor
inside a lab node, the lab commands' messages, `hostmesh run` refusing a bad config
before touching the rules and keeping them (fail mode) when it fails later, capture's
pod count, and the tunnel destination's record of a failed upstream connect."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.cli.doctor import PROBE_RULES, _scratch_tproxy
from agent.identity import store
from tests.lab.conftest import PY, hm, lab_up, ns_run, wait_for


def test_doctor_probe_ok_and_fail():
    assert _scratch_tproxy() == ("OK", "nftables with tproxy and socket matching", "")
    status, what, fix = _scratch_tproxy(PROBE_RULES.replace("accept\n  }", "accept }"))  # the 1.0.6 bug, or any refusal
    if status == "OK":  # a later nft accepts `accept }`: refuse an unknown expression instead
        status, what, fix = _scratch_tproxy(PROBE_RULES.replace("socket transparent 1", "socket nosuch 1"))
    assert status == "FAIL" and what.startswith("kernel refuses nft tproxy/socket rules: ") and "Error" in what
    assert fix.startswith("load nft_tproxy, nft_socket")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with lab_up("ecli", "--nodes", "2", "--pods-per-node", "1") as lab:
        yield lab


def test_lab_doctor_checks_a_node_from_the_host(lab):
    r = hm("lab", "doctor", "node-0", "--name", "ecli")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert "[OK  ] nftables with tproxy and socket matching" in lines
    assert "[OK  ] capture rules and policy routing installed" in lines
    assert "[OK  ] port 15008 listening" in lines and not [x for x in lines if x.startswith("[FAIL")]
    assert any(x.startswith("[OK  ] certificate spiffe://cluster.local/ns/default/sa/pod-0-0: available") for x in lines)


def test_lab_command_messages(lab):
    r = hm("lab", "status")
    assert r.returncode == 0 and any(line.split()[:4] == ["ecli", "2", "2", "2"] for line in r.stdout.splitlines())
    r = hm("lab", "exec", "pod-0-0", "--name", "ecli", "--", "true")
    assert (r.returncode, r.stderr) == (0, "")
    r = hm("lab", "down", "--name", "enone")
    assert (r.returncode, r.stdout) == (0, "lab enone does not exist; nothing to remove\n")
    r = hm("lab", "agent", "node-1", "start", "--name", "ecli")
    pid = lab.node(1)["agent_pid"]
    assert (r.returncode, r.stderr) == (
        2, f"hostmesh: the agent on node-1 is running (pid {pid}): lab agent node-1 stop first\n")
    r = hm("lab", "agent", "node-1", "kill", "--name", "ecli")
    assert (r.returncode, r.stdout) == (0, "node-1: agent killed (SIGKILL)\n")
    r = hm("lab", "agent", "node-1", "kill", "--name", "ecli")
    assert (r.returncode, r.stdout) == (0, "node-1: no agent was running\n")
    r = hm("lab", "agent", "node-1", "start", "--name", "ecli")
    lab.refresh()
    assert (r.returncode, r.stdout) == (0, f"node-1: agent started, pid {lab.node(1)['agent_pid']}\n")
    r = hm("lab", "ctl", "node-0", "--name", "ecli", "status")
    assert r.returncode == 0 and r.stdout.startswith("node:") and "node-0" in r.stdout.splitlines()[0]
    r = hm("lab", "ctl", "node-0", "--name", "ecli", "policies", "delete", "nosuch")
    assert (r.returncode, r.stderr) == (
        2, "hostmesh ctl: policies delete 'nosuch': give NAMESPACE/NAME (hostmesh ctl policies lists them)\n")


def test_tunnel_destination_records_a_failed_upstream(lab):
    dst = lab.pod("pod-1-0")["ip"]
    r = ns_run(lab.pod("pod-0-0")["netns"], "curl", "-s", "-o", "/dev/null", "--max-time", "5", f"http://{dst}:9/")
    assert r.returncode != 0  # nothing listens on :9 in pod-1-0

    def records():
        return [x for x in lab.access_log(1) if x.get("dst", {}).get("port") == 9 and x["direction"] == "inbound"]

    wait_for(lambda: records(), timeout=10)
    rec = records()[0]
    assert rec["mode"] == "tunnel" and rec["reason"].startswith("upstream_failed: ") and rec["verdict"] == "allow"
    assert rec["src"]["principal"] == "spiffe://cluster.local/ns/default/sa/pod-0-0"
    counters = lab.stats(1)
    assert not [k for k in counters if " " in k]  # no counter name with a space


def _config(tmp: Path, fail: str, bundle: str = "bundle.pem") -> Path:
    ca = tmp / "ca"
    if not ca.exists():
        store.init_dir(ca)
        store.issue_node(ca, "n0")
    f = tmp / f"config-{fail}.yaml"
    f.write_text(f"node: {{name: n0, address: 127.0.0.1}}\nstate_dir: {tmp}/state\n"
                 f"admin: {{socket: {tmp}/admin.sock}}\ncapture: {{fail: {fail}, watch_links: false}}\n"
                 f"identity: {{ca_cert: {ca}/nodes/n0/cert.pem, ca_key: {ca}/nodes/n0/key.pem, "
                 f"trust_bundle: {ca}/{bundle}}}\n"
                 "workloads:\n"
                 "  - {uid: a, name: a, ip: 198.19.0.2, ips: ['fd00:686d::2']}\n"
                 "  - {uid: b, name: b, ip: 198.19.0.3, ips: ['fd00:686d::3']}\n")
    return f


def _tables(ns: str) -> str:
    return ns_run(ns, "nft", "list", "tables").stdout


def test_run_refuses_a_bad_config_before_touching_capture(scratch_ns, tmp_path):
    f = _config(tmp_path, "closed", bundle="nope.pem")
    r = ns_run(scratch_ns, PY, "-m", "agent", "run", "--config", str(f), timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "ExceptionGroup" not in r.stderr, r.stderr
    assert r.stderr.splitlines() == [
        f"hostmesh: {f}:5: identity.trust_bundle: {tmp_path}/ca/nope.pem: no such file (create it or correct the path)",
        "hostmesh: not started; nothing was changed (capture rules from an earlier agent, if any, stay as they are)"]
    assert "hostmesh" not in _tables(scratch_ns)


@pytest.mark.parametrize("fail", ["closed", "open"])
def test_a_later_start_up_failure_is_one_line_and_keeps_the_rules(scratch_ns, tmp_path, fail):
    f = _config(tmp_path, fail)
    # a socket bound (not listening) on :15008 passes the pre-flight, then fails the agent's bind
    holder = subprocess.Popen(["ip", "netns", "exec", scratch_ns, PY, "-c",
                               "import socket,sys,time; s=socket.socket(); s.bind(('0.0.0.0',15008)); "
                               "print('bound', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "bound"
        r = ns_run(scratch_ns, PY, "-m", "agent", "run", "--config", str(f), timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 1, r.stderr
    last = r.stderr.splitlines()[-1]
    assert "Traceback" not in r.stderr and "ExceptionGroup" not in r.stderr, r.stderr
    assert last.startswith("hostmesh: the agent stopped: OSError: ") and "Address already in use" in last
    assert "(a port of ports.* is bound by another program: ss -tanp)" in last
    want = {"closed": "capture rules stay installed (capture.fail: closed): pods' new connections are refused "
                      "until an agent runs; hostmesh capture remove takes them out",
            "open": "capture rules stay installed (capture.fail: open): pods' connections flow directly, unenforced"}
    assert last.endswith(want[fail])
    assert "table inet hostmesh" in _tables(scratch_ns)  # as documented: the fail rule carries the mode
    r = hm("capture", "remove", "--netns", scratch_ns, "--config", str(f))
    assert r.returncode == 0 and "hostmesh" not in _tables(scratch_ns)


def test_capture_install_counts_pods_not_addresses(scratch_ns, tmp_path):
    f = _config(tmp_path, "closed")
    r = hm("capture", "install", "--netns", scratch_ns, "--config", str(f))
    assert (r.returncode, r.stdout) == (0, "capture installed (nftables, 2 pod(s) enrolled, 4 address(es))\n")
    assert hm("capture", "remove", "--netns", scratch_ns).returncode == 0


def test_ports_held_by_another_program_are_named_by_check_config(scratch_ns, tmp_path):
    f = _config(tmp_path, "closed")
    holder = subprocess.Popen(["ip", "netns", "exec", scratch_ns, PY, "-c",
                               "import socket,time; s=socket.socket(); s.bind(('0.0.0.0',15020)); s.listen(); "
                               "print('up', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "up"
        r = ns_run(scratch_ns, PY, "-m", "agent", "check-config", str(f))
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 1
    assert r.stderr.startswith(f"{f}:1: ports.metrics: port 15020 is in use by pid ")
    assert r.stderr.endswith("(stop that process, or choose another port)\n")
