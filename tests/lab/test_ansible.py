"""The Ansible role (ansible/), for real: lint-clean on the production profile; the
playbook installs the wheel built from this repository on two "hosts" — each one a lab
node namespace and a scratch prefix — the agents it installed carry a pod's traffic to
the other node over mTLS with the role's CA, the peers rendered from the inventory and
the policy it distributed; hostmesh-register adds and removes a pod as a CNI plugin
would; a second run changes nothing. The machine's own namespace is left as it was.

How a lab namespace plays a host: each inventory host's ``ansible_python_interpreter``
is a two-line wrapper, ``ip netns exec <node netns> python``, so every module (sysctl,
capture, the readiness probe) runs inside that node's namespace while files land under
the host's prefix. Controller-side tasks (``delegate_to: localhost``: the CA) run here.
No systemd on this machine: ``hostmesh_manage_service: false``, the unit file is still
written (and checked with ``systemd-analyze verify``), and the test starts each agent the
way the unit would: as an unprivileged user with CAP_NET_ADMIN and CAP_NET_RAW only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.lab.conftest import PY, Lab, json_lines, lab_up, ns_run, wait_for
from tests.lab.wheels import build_wheel, dependency_wheelhouse, venv_python

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
BIN = Path(PY).parent  # the venv the tests run in: ansible-playbook, ansible-lint, hostmesh
LAB = "tans"
# What the unit grants (templates/hostmesh.service.j2), applied with setpriv.
UNPRIVILEGED = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
                "--inh-caps", "-all,+net_admin,+net_raw", "--ambient-caps", "-all,+net_admin,+net_raw",
                "--bounding-set", "-all,+net_admin,+net_raw", "--no-new-privs", "--"]
DENY_ADMIN = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  selector: {matchLabels: {app: pod-1-0}}
  action: DENY
  rules:
    - to: [{operation: {paths: ["/admin*"]}}]
"""
pytestmark = pytest.mark.skipif(not (BIN / "ansible-playbook").exists() or not shutil.which("setpriv"),
                                reason="needs ansible-core in the venv (the 'deploy' extra) and setpriv")
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


# ---- running the playbook ------------------------------------------------------------------
@dataclass
class Install:
    tmp: Path
    lab: Lab
    inventory: Path
    hosts: dict[str, dict] = field(default_factory=dict)  # node name -> {netns, prefix, ...}
    agents: dict[str, subprocess.Popen] = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)
    host_before: dict = field(default_factory=dict)

    def playbook(self, *extra: str) -> dict:
        env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
               "ANSIBLE_LOCAL_TEMP": str(self.tmp / "ansible-local"),
               "ANSIBLE_REMOTE_TEMP": str(self.tmp / "ansible-remote"),
               "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
        t0 = time.monotonic()
        r = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(self.inventory), "site.yml", *extra],
                           cwd=ANSIBLE, env=env, capture_output=True, text=True, timeout=600)
        took = time.monotonic() - t0
        (self.tmp / f"playbook-{len(self.runs) + 1}.log").write_text(r.stdout + r.stderr)
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
        recap = {m[0]: {"ok": int(m[1]), "changed": int(m[2]), "unreachable": int(m[3]), "failed": int(m[4])}
                 for m in RECAP.findall(r.stdout)}
        run = {"seconds": round(took, 1), "recap": recap, "stdout": r.stdout}
        self.runs.append(run)
        print(f"playbook run {len(self.runs)}: {took:.1f} s, {recap}")
        return run

    def config(self, node: str) -> Path:
        return Path(self.hosts[node]["prefix"]) / "etc/hostmesh/config.yaml"

    def socket(self, node: str) -> str:
        return str(Path(self.hosts[node]["prefix"]) / "run/hostmesh/admin.sock")

    def admin(self, node: str, method: str, path: str, body=None):
        from agent.admin.client import AdminClient

        return AdminClient(self.socket(node)).request(method, path, body)

    def start_agent(self, node: str) -> None:
        h = self.hosts[node]
        log = open(self.tmp / f"agent-{node}.log", "wb")
        self.agents[node] = subprocess.Popen(
            ["ip", "netns", "exec", h["netns"], *UNPRIVILEGED, f"{h['prefix']}/opt/hostmesh/bin/hostmesh",
             "--log-format", "json", "run", "--config", str(self.config(node))],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    def wait_ready(self, node: str) -> None:
        def ready() -> bool:
            assert self.agents[node].poll() is None, self.agent_log(node)[-3000:]
            return ns_run(self.hosts[node]["netns"], "curl", "-sf", "-m", "1",
                          "http://127.0.0.1:15021/healthz/ready").returncode == 0
        wait_for(ready, timeout=30)

    def agent_log(self, node: str) -> str:
        return (self.tmp / f"agent-{node}.log").read_text(errors="replace")

    def access_log(self, node: str) -> list[dict]:
        return json_lines(self.agent_log(node), '{"type":')

    def stop_agents(self) -> None:
        for p in self.agents.values():
            if p.poll() is None:
                p.terminate()
        for p in self.agents.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def task_output(run: dict, task: str) -> str:
    """What the playbook printed for one task (or handler)."""
    return run["stdout"].split(f"[hostmesh : {task}")[1].split("\n\n")[0] if f"[hostmesh : {task}" in run["stdout"] else ""


def host_state() -> dict:
    """What the role must not touch in the machine's own namespace."""
    def out(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True).stdout

    return {"nft": out("nft", "list", "ruleset"), "rule": out("ip", "rule"), "route": out("ip", "route"),
            "sysctl": out("sysctl", "net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter",
                          "net.ipv4.conf.default.rp_filter")}


def write_inventory(tmp: Path, roots: Path, lab: Lab, wheel: Path, wheelhouse: Path, policy: Path) -> tuple[Path, dict]:
    base_python = venv_python()
    hosts, inv_hosts = {}, {}
    for node in lab.status["nodes"]:
        name, netns = node["name"], node["netns"]
        prefix = roots / name
        wrapper = tmp / f"python-{name}"
        wrapper.write_text(f"#!/bin/sh\nexec ip netns exec {netns} {PY} \"$@\"\n")
        wrapper.chmod(0o755)
        pods = [p for p in lab.status["pods"] if p["node"] == name]
        cidr = re.sub(r"\.\d+$", ".0/24", pods[0]["ip"])  # the lab gives node i 198.19.i.0/24
        hosts[name] = {"netns": netns, "prefix": str(prefix), "address": node["address"], "pods": pods}
        inv_hosts[name] = {"ansible_python_interpreter": str(wrapper), "hostmesh_prefix": str(prefix),
                           "hostmesh_node_address": node["address"], "hostmesh_pod_cidrs": [cidr]}
    # pod-1-0 lives on node-1 for good (static, from the inventory); pod-0-0 registers at
    # run time through hostmesh-register.
    server = next(p for p in lab.status["pods"] if p["name"] == "pod-1-0")
    inv_hosts["node-1"]["hostmesh_workloads"] = [
        {"uid": "pod-1-0", "name": "pod-1-0", "namespace": "default", "service_account": "pod-1-0",
         "ip": server["ip"], "labels": {"app": "pod-1-0"}, "http_ports": [8080]}]
    group_vars = {
        "ansible_connection": "local",
        "ansible_become": False,  # already root; no sudo here
        "hostmesh_wheel": str(wheel),
        "hostmesh_pip_extra_args": f"--no-index --find-links {wheelhouse}",
        "hostmesh_python": base_python,
        "hostmesh_manage_packages": False,
        "hostmesh_manage_service": False,
        "hostmesh_install_unit": True,
        "hostmesh_user": "nobody",
        "hostmesh_group": "nogroup",
        "hostmesh_create_user": False,
        "hostmesh_ca_dir": str(tmp / "ca"),
        "hostmesh_controller_cli": str(BIN / "hostmesh"),
        "hostmesh_policy_files": [str(policy)],
        "hostmesh_drain_deadline_s": 3,
        "hostmesh_drain_accept_grace_s": 1,
        "hostmesh_ready_retries": 20,
        "hostmesh_ready_delay": 1,
    }
    inventory = tmp / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"hostmesh": {"vars": group_vars, "hosts": inv_hosts}}, sort_keys=False))
    return inventory, hosts


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ansible")
    wheel = build_wheel(tmp)
    wheelhouse = tmp / "wheelhouse"
    wheelhouse.mkdir()
    dependency_wheelhouse(wheelhouse)
    policy = tmp / "no-admin.yaml"
    policy.write_text(DENY_ADMIN)
    before = host_state()
    # The prefixes: pytest's directories are 0700, and the agent runs as nobody.
    roots = Path(tempfile.mkdtemp(prefix="hostmesh-ansible-"))
    roots.chmod(0o755)
    with lab_up(LAB, "--nodes", "2", "--pods-per-node", "1", "--no-agent") as lab:
        inventory, hosts = write_inventory(tmp, roots, lab, wheel, wheelhouse, policy)
        inst = Install(tmp, lab, inventory, hosts, host_before=before)
        # the role must be the one that turns forwarding on in the node namespace
        for h in hosts.values():
            assert ns_run(h["netns"], "sysctl", "-w", "net.ipv4.ip_forward=0").returncode == 0
        try:
            inst.playbook("-e", "hostmesh_check_ready=false")
            for node in hosts:
                inst.start_agent(node)
            for node in hosts:
                inst.wait_ready(node)
            yield inst
        finally:
            inst.stop_agents()
            lab.stop_procs()
            shutil.rmtree(roots, ignore_errors=True)


# ---- the tests -----------------------------------------------------------------------------
def test_ansible_lint_is_clean_on_the_production_profile():
    r = subprocess.run([str(BIN / "ansible-lint"), "--profile", "production"], cwd=ANSIBLE, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "NO_COLOR": "1", "PATH": f"{BIN}:{os.environ['PATH']}"})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "0 failure(s), 0 warning(s)" in out and "'production'" in out, out


def test_first_run_installs_everything_under_the_prefix_inside_the_node_namespace(installed):
    first = installed.runs[0]
    assert set(first["recap"]) == {"node-0", "node-1"}
    assert all(r["failed"] == 0 and r["changed"] > 0 for r in first["recap"].values()), first["recap"]
    for node, h in installed.hosts.items():
        prefix = Path(h["prefix"])
        venv = prefix / "opt/hostmesh"
        r = subprocess.run([str(venv / "bin/hostmesh"), "--version"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.startswith("hostmesh "), r.stderr
        # the installed package is the wheel's copy, not this checkout
        r = subprocess.run([str(venv / "bin/python"), "-c", "import agent; print(agent.__file__)"],
                           capture_output=True, text=True, cwd="/")
        assert r.stdout.startswith(str(venv)), r.stdout
        etc = prefix / "etc/hostmesh"
        cfg = yaml.safe_load((etc / "config.yaml").read_text())
        # the cluster view: the other node from the inventory, never this one
        other = next(n for n in installed.hosts if n != node)
        assert [p["name"] for p in cfg["cluster"]["nodes"]] == [other]
        assert cfg["cluster"]["nodes"][0]["address"] == installed.hosts[other]["address"]
        assert cfg["node"] == {"name": node, "address": h["address"]}
        assert cfg["admin"]["socket"] == installed.socket(node)
        assert cfg["identity"]["ca_key"] == str(etc / "ca/key.pem")
        # static workload of node-1: local there, remote (node: node-1) on node-0
        assert [w.get("node") for w in cfg["workloads"]] == ([None] if node == "node-1" else ["node-1"])
        r = subprocess.run([str(venv / "bin/hostmesh"), "check-config", str(etc / "config.yaml")], capture_output=True)
        assert r.returncode == 0, r.stderr
        # CA material: this node's own intermediate, the key readable by the agent's group only
        assert (etc / "ca/cert.pem").read_bytes() == (installed.tmp / f"ca/nodes/{node}/cert.pem").read_bytes()
        assert not (etc / "ca/root.key").exists() and not list(prefix.rglob("root.key"))
        key = (etc / "ca/key.pem").stat()
        assert oct(key.st_mode & 0o777) == "0o640" and key.st_gid == 65534
        assert (etc / "policies/no-admin.yaml").read_text() == DENY_ADMIN
        assert os.access(prefix / "usr/local/sbin/hostmesh-register", os.X_OK)
        # kernel settings: applied in the node namespace
        sysctl = ns_run(h["netns"], "sysctl", "-n", "net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter").stdout
        assert sysctl.split() == ["1", "0"]
        assert "net.ipv4.ip_forward = 1" in (prefix / "etc/sysctl.d/90-hostmesh.conf").read_text()
        # the hardened unit: systemd accepts it as written
        unit = prefix / "etc/systemd/system/hostmesh.service"
        text = unit.read_text()
        for line in ("AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW", "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW",
                     "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                     "Restart=on-failure", "KillSignal=SIGTERM", "ExecReload=/bin/kill -HUP $MAINPID",
                     f"ReadWritePaths={prefix}/var/lib/hostmesh {prefix}/run/hostmesh", "User=nobody"):
            assert line in text, line
        assert int(re.search(r"TimeoutStopSec=(\d+)", text)[1]) > 3 + 1
        if shutil.which("systemd-analyze"):
            r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
            # (the test's stand-in user is nobody, which systemd rightly calls unsafe)
            complaints = [ln for ln in r.stderr.splitlines() if "hostmesh.service" in ln and "user nobody" not in ln]
            assert r.returncode == 0 and not complaints, r.stderr
    # capture rules: installed by the role in each node namespace (before the agents ran)
    assert task_output(first, "Install the capture rules").count("changed: [node-") == 2
    for h in installed.hosts.values():
        assert "table inet hostmesh" in ns_run(h["netns"], "nft", "list", "tables").stdout
    # the root stays on the controller, one intermediate per node
    assert sorted(p.name for p in (installed.tmp / "ca/nodes").iterdir()) == ["node-0", "node-1"]


def test_installed_agents_carry_a_registered_pods_traffic_over_mtls(installed):
    lab = installed.lab
    client, server = lab.pod("pod-0-0"), lab.pod("pod-1-0")
    register = Path(installed.hosts["node-0"]["prefix"]) / "usr/local/sbin/hostmesh-register"
    # hostmesh-register as a chained CNI plugin: ADD after the interface plugin
    conf = {"cniVersion": "1.0.0", "name": "lab", "type": "hostmesh-register",
            "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": f"{client['ip']}/32"}]}}
    cni_env = {**os.environ, "CNI_CONTAINERID": "ctr-pod-0-0", "CNI_NETNS": f"/var/run/netns/{client['netns']}",
               "CNI_IFNAME": "eth0", "CNI_PATH": str(register.parent),
               "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=pod-0-0;K8S_POD_NAMESPACE=default;"
                           "HOSTMESH_SERVICE_ACCOUNT=pod-0-0"}
    r = subprocess.run([str(register)], input=json.dumps(conf), capture_output=True, text=True,
                       env={**cni_env, "CNI_COMMAND": "ADD"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout) == conf["prevResult"]
    r = subprocess.run([str(register)], input=json.dumps(conf), capture_output=True, text=True,
                       env={**cni_env, "CNI_COMMAND": "CHECK"})
    assert r.returncode == 0, r.stdout
    status, workloads = installed.admin("node-0", "GET", "/v1/workloads")
    mine = next(w for w in workloads if w["uid"] == "ctr-pod-0-0")
    assert mine["name"] == "pod-0-0" and mine["service_account"] == "pod-0-0"

    lab.serve_http("pod-1-0", 8080)
    r = ns_run(client["netns"], "curl", "-s", "-m", "5", f"http://{server['ip']}:8080/hello")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["client"].split(":")[0] == client["ip"]  # source kept across the tunnel
    # the policy the role copied into node-1's policy directory is in force there
    r = ns_run(client["netns"], "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
               f"http://{server['ip']}:8080/admin/x")
    assert r.stdout == "403", r.stdout + r.stderr

    def connections(node: str) -> list[dict]:
        return [x for x in installed.access_log(node) if x["type"] == "connection"]

    def inn() -> list[dict]:
        return [x for x in connections("node-1") if x["direction"] == "inbound" and x["src"]["ip"] == client["ip"]]

    def out() -> list[dict]:
        return [x for x in connections("node-0") if x["direction"] == "outbound" and x["dst"]["ip"] == server["ip"]]

    wait_for(lambda: len(inn()) == len(out()) == 2, timeout=10)  # each agent's log flushes every second
    inn, out = inn(), out()
    assert {x["mode"] for x in inn + out} == {"tunnel"}
    assert inn[0]["src"]["principal"] == "spiffe://cluster.local/ns/default/sa/pod-0-0"
    assert out[0]["dst"]["principal"] == "spiffe://cluster.local/ns/default/sa/pod-1-0"
    assert [(x["verdict"], x["policy"]) for x in inn] == [("allow", None), ("deny", "default/no-admin")]
    # the SVIDs were minted by the intermediates the role issued on the controller
    for node, pod in (("node-0", "pod-0-0"), ("node-1", "pod-1-0")):
        inter = json.loads(subprocess.run([str(BIN / "hostmesh"), "ca", "inspect", "--json",
                                           str(installed.tmp / f"ca/nodes/{node}/cert.pem")],
                                          capture_output=True, text=True, check=True).stdout)[0]
        _, certs = installed.admin(node, "GET", "/v1/certs")
        svid = next(c for c in certs if c["identity"] == f"spiffe://cluster.local/ns/default/sa/{pod}")
        assert svid["state"] == "available" and svid["issuer"] == inter["subject"], (svid, inter)
    # the agents run as nobody with two capabilities, as the unit would run them
    for node, p in installed.agents.items():
        status = Path(f"/proc/{p.pid}/status").read_text()
        assert re.search(r"^Uid:\s+65534\b", status, re.M) and re.search(r"^CapEff:\s+0+3000$", status, re.M), node

    # teardown: CNI DEL removes it; a second DEL is not an error
    for _ in range(2):
        r = subprocess.run([str(register)], input=json.dumps(conf), capture_output=True, text=True,
                           env={**cni_env, "CNI_COMMAND": "DEL"})
        assert r.returncode == 0, r.stdout + r.stderr
    _, workloads = installed.admin("node-0", "GET", "/v1/workloads")
    assert "ctr-pod-0-0" not in {w["uid"] for w in workloads}
    r = subprocess.run([str(register), "list"], capture_output=True, text=True)
    assert r.returncode == 0 and "ctr-pod-0-0" not in r.stdout


def test_second_run_changes_nothing_and_finds_the_agents_ready(installed):
    second = installed.playbook("-e", "hostmesh_check_ready=true")
    assert set(second["recap"]) == {"node-0", "node-1"}
    assert all(r["changed"] == 0 and r["failed"] == 0 for r in second["recap"].values()), second["recap"]
    # readiness probed by the role inside each node namespace, and the running agents'
    # capture rules left alone
    ready = task_output(second, "Wait until the agent is ready")
    assert "ok: [node-0]" in ready and "ok: [node-1]" in ready, ready
    assert task_output(second, "Install the capture rules").count("skipping: [node-") == 2
    assert all(p.poll() is None for p in installed.agents.values())
    print(f"first run {installed.runs[0]['seconds']} s, second run {second['seconds']} s")
    # the machine's own namespace: no rules, routes or settings from the role
    assert host_state() == installed.host_before


def test_reissued_intermediates_reach_the_agents_on_reload(installed):
    """Certificate rotation as docs/operations.md tells it: re-issue, copy, reload."""
    _, certs = installed.admin("node-1", "GET", "/v1/certs")
    old_serial = certs[0]["serial"]
    old = {n: (Path(h["prefix"]) / "etc/hostmesh/ca/cert.pem").read_bytes() for n, h in installed.hosts.items()}
    run = installed.playbook("-e", "hostmesh_ca_reissue=true")
    assert all(r["changed"] == 2 and r["failed"] == 0 for r in run["recap"].values()), run["recap"]
    assert task_output(run, "Issue this node's intermediate").count("changed: [node-") == 2
    assert "Reload hostmesh" in run["stdout"]  # notified (skipped here: no systemd)
    for node, h in installed.hosts.items():
        new = (Path(h["prefix"]) / "etc/hostmesh/ca/cert.pem").read_bytes()
        assert new != old[node] and new == (installed.tmp / f"ca/nodes/{node}/cert.pem").read_bytes()
        status, body = installed.admin(node, "POST", "/v1/reload")  # what the handler's SIGHUP does
        assert status == 200, body
    _, certs = installed.admin("node-1", "GET", "/v1/certs")
    assert certs[0]["serial"] != old_serial and certs[0]["state"] == "available"
    # traffic across on the new intermediates; hostmesh-register by hand this time
    lab, register = installed.lab, str(Path(installed.hosts["node-0"]["prefix"]) / "usr/local/sbin/hostmesh-register")
    client, server = lab.pod("pod-0-0"), lab.pod("pod-1-0")
    r = subprocess.run([register, "add", "--uid", "u-0", "--name", "pod-0-0", "--service-account", "pod-0-0",
                        "--ip", client["ip"], "--label", "app=pod-0-0"], capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["uid"] == "u-0", r.stderr
    r = ns_run(client["netns"], "curl", "-s", "-m", "5", f"http://{server['ip']}:8080/again")
    assert r.returncode == 0 and json.loads(r.stdout)["path"] == "/again", r.stderr
    assert subprocess.run([register, "del", "--uid", "u-0"]).returncode == 0
    r = subprocess.run([register, "del", "--uid", "u-0"], capture_output=True, text=True)
    assert r.returncode == 1 and "not_found" in r.stderr


def test_absent_removes_the_capture_rules_and_every_file_and_is_idempotent(installed):
    installed.stop_agents()
    run = installed.playbook("-e", "hostmesh_state=absent")
    assert all(r["changed"] > 0 and r["failed"] == 0 for r in run["recap"].values()), run["recap"]
    for h in installed.hosts.values():
        assert "hostmesh" not in ns_run(h["netns"], "nft", "list", "tables").stdout
        assert "lookup 100" not in ns_run(h["netns"], "ip", "rule").stdout
        left = sorted(str(p.relative_to(h["prefix"])) for p in Path(h["prefix"]).rglob("*") if not p.is_dir())
        assert left == [], left
    again = installed.playbook("-e", "hostmesh_state=absent")
    assert all(r["changed"] == 0 and r["failed"] == 0 for r in again["recap"].values()), again["recap"]
