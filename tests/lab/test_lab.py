"""`hostmesh lab`: build, reach, remove — and leave the machine exactly as it was."""

import json
import signal
import subprocess
import time

import pytest

from tests.lab.conftest import PY, hm, lab_up, ns_run


def host_snapshot(own_prefix: str) -> dict:
    """The machine's own namespace, as the issue lists it (other labs' namespaces, which
    other tests may hold, are left out of the netns list)."""
    def out(*cmd):
        return subprocess.run(cmd, capture_output=True, text=True).stdout

    netns = sorted(ln.split()[0] for ln in out("ip", "netns", "list").splitlines()
                   if ln.strip() and ln.split()[0].startswith(own_prefix))
    return {"link": out("ip", "-o", "link"), "route": out("ip", "route"), "route6": out("ip", "-6", "route"),
            "rule": out("ip", "rule"), "rule6": out("ip", "-6", "rule"), "nft": out("nft", "list", "ruleset"),
            "netns": netns}


def test_up_3x4_fast_and_every_pod_reaches_every_other_v4_v6():
    before = host_snapshot("hm-tl3-")
    t0 = time.monotonic()
    with lab_up("tl3", "--nodes", "3", "--pods-per-node", "4", "--no-agent") as lab:
        assert time.monotonic() - t0 < 20
        pods = lab.status["pods"]
        assert len(pods) == 12 and len({p["ip"] for p in pods}) == 12
        targets = " ".join(p["ip"] for p in pods) + " " + " ".join(p["ip6"] for p in pods)
        script = f"fail=0; for t in {targets}; do ping -c1 -W1 -q $t >/dev/null || {{ echo unreachable $t; fail=1; }}; done; exit $fail"
        procs = [subprocess.Popen(["ip", "netns", "exec", p["netns"], "sh", "-c", script], stdout=subprocess.PIPE,
                                  text=True) for p in pods]
        for p, pod in zip(procs, pods):
            out, _ = p.communicate(timeout=60)
            assert p.returncode == 0, f"{pod['name']}: {out}"
        # nothing in a lab namespace routes outside the lab
        for n in lab.status["nodes"]:
            routes = ns_run(n["netns"], "ip", "route").stdout
            assert "default" not in routes, routes
    assert host_snapshot("hm-tl3-") == before


def test_down_after_sigkilled_up_leaves_nothing():
    before = host_snapshot("hm-tkill-")
    hm("lab", "down", "--name", "tkill")
    p = subprocess.Popen([PY, "-m", "agent", "lab", "up", "--name", "tkill", "--nodes", "3", "--pods-per-node", "4"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.8)  # halfway: namespaces exist, agents starting
    p.send_signal(signal.SIGKILL)
    p.wait()
    r = hm("lab", "down", "--name", "tkill")
    assert r.returncode == 0, r.stderr
    time.sleep(0.2)
    assert host_snapshot("hm-tkill-") == before


def test_bad_inputs_are_one_line_errors_and_build_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: 2\npods:\n  - {name: a, node: 0, colour: red}\n")
    r = hm("lab", "up", "--name", "tbad", "--topology", str(bad))
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0
    assert f"{bad}:3: pods[0].colour: unknown field" in r.stderr
    dup = tmp_path / "dup.yaml"
    dup.write_text("nodes: 1\npods:\n  - {name: a}\n  - {name: a}\n")
    r = hm("lab", "up", "--name", "tbad", "--topology", str(dup))
    assert r.returncode != 0 and "duplicate pod name 'a'" in r.stderr and ":4:" in r.stderr
    out = tmp_path / "range.yaml"
    out.write_text("nodes: 1\npods:\n  - {name: a, node: 3}\n")
    r = hm("lab", "up", "--name", "tbad", "--topology", str(out))
    assert r.returncode != 0 and "is not a node" in r.stderr
    assert not subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count("hm-tbad-")
    r = hm("run", "--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "missing.yaml: no such file" in r.stderr


def test_name_in_use_two_labs_side_by_side_status_and_exec():
    with lab_up("tsa", "--nodes", "1", "--pods-per-node", "1", "--no-agent") as a:
        r = hm("lab", "up", "--name", "tsa", "--no-agent")
        assert r.returncode != 0 and "exists already" in r.stderr
        assert a.status["pods"][0]["ip"] == "198.19.0.2"  # untouched
        with lab_up("tsb", "--nodes", "1", "--pods-per-node", "1", "--no-agent") as b:
            st = json.loads(hm("lab", "status", "--name", "tsb", "--json").stdout)
            assert set(st) >= {"name", "nodes", "pods", "kafka", "otlp"}
            assert set(st["nodes"][0]) >= {"name", "netns", "address", "admin_socket", "agent_pid"}
            assert set(st["pods"][0]) >= {"name", "namespace", "service_account", "labels", "netns", "ip", "node",
                                          "identity"}
            assert st["pods"][0]["identity"] == "spiffe://cluster.local/ns/default/sa/pod-0-0"
            assert b.status["pods"][0]["netns"] != a.status["pods"][0]["netns"]
            r = hm("lab", "exec", "--name", "tsb", "pod-0-0", "--", "sh", "-c", "ip -o addr show eth0; exit 7")
            assert r.returncode == 7 and "198.19.0.2/32" in r.stdout


@pytest.mark.parametrize("nodes", [2])
def test_agents_become_ready_and_status_shows_pids(nodes):
    with lab_up("tag", "--nodes", str(nodes), "--pods-per-node", "1") as lab:
        pids = [n["agent_pid"] for n in lab.status["nodes"]]
        assert all(pids)
        for n in lab.status["nodes"]:
            r = ns_run(n["netns"], "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                       "http://127.0.0.1:15021/healthz/ready")
            assert r.stdout == "200"
        r = hm("lab", "agent", "--name", "tag", "node-0", "stop")
        assert r.returncode == 0
        lab.refresh()
        assert lab.status["nodes"][0]["agent_pid"] is None
