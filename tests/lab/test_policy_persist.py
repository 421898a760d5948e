"""Failing open, closed (issue 15 item 12), with real agents and real clients: a DENY
applied with ``lab apply`` still holds after the agent is stopped and started, and a
bad policy file beside a valid DENY file at start leaves the DENY enforced and the node
not ready, saying why in /v1/status, /healthz/ready, ``hostmesh doctor`` and the log.
And item 10: a "billion laughs" body is refused at once, and new connections through
the node keep working while 10,000 policies load."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import yaml

from tests.lab.conftest import PY, hm, lab_up, ns_run, wait_for

TOPOLOGY = """\
nodes: 2
pods:
  - {name: web, namespace: shop, service_account: web-sa, labels: {app: web}, node: 0, http_ports: [8080]}
  - {name: client, namespace: front, service_account: client-sa, labels: {app: client}, node: 1}
"""
DENY_ADMIN = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"""


def code(lab, path: str) -> str:
    r = ns_run(lab.pod("client")["netns"], "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
               f"http://{lab.pod('web')['ip']}:8080{path}")
    return r.stdout


def laughs() -> str:
    lines = ['a0: &a0 ["lol"]'] + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_at_once_and_connections_go_on_during_a_big_load(tmp_path):
    from agent.rbac.bench import make_policies

    with lab_up("blaughs", topology=TOPOLOGY, tmp=tmp_path) as lab:
        lab.serve_http("web", 8080)
        t0 = time.monotonic()
        status, body = lab.admin(0, "PUT", "/v1/policies", laughs())
        assert status == 400 and time.monotonic() - t0 < 5
        assert body["error"]["message"] == "admin-api:4: excessive aliasing: more than 10000 values reached through aliases"
        # 10,000 policies PUT to the destination's agent while a pod on the other node
        # opens new connections through it, as a new user would (curl, one per request)
        big = make_policies(10_000, 1000).encode()
        put = subprocess.Popen([PY, "-c", "import sys; from agent.admin.client import AdminClient; "
                                f"print(AdminClient({lab.node(0)['admin_socket']!r}, timeout=120).request("
                                "'PUT', '/v1/policies', sys.stdin.buffer.read(), 'application/yaml')[0])"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=False)
        put.stdin.write(big)
        put.stdin.close()
        codes = []
        while put.poll() is None:
            r = ns_run(lab.pod("client")["netns"], "curl", "-s", "-m", "5", "-o", "/dev/null", "-w",
                       "%{http_code} %{time_total}", f"http://{lab.pod('web')['ip']}:8080/ok")
            codes.append(r.stdout)
        assert put.stdout.read().strip() == b"200"
        assert codes and all(c.split()[0] == "200" for c in codes), codes
        assert lab.admin(0, "GET", "/v1/status")[1]["counts"]["policies"] == 10_000
        print("connections during the load (code, seconds):", codes)


def test_lab_apply_survives_stop_start_and_a_bad_file_at_start_is_not_ready(tmp_path):
    with lab_up("bpersist", topology=TOPOLOGY, tmp=tmp_path) as lab:
        lab.serve_http("web", 8080)
        assert code(lab, "/admin/x") == "200"
        lab.apply(DENY_ADMIN)
        assert (code(lab, "/admin/x"), code(lab, "/ok")) == ("403", "200")

        # restart the destination's agent: the DENY is restored from its state_dir
        assert hm("lab", "agent", "--name", lab.name, "node-0", "stop").returncode == 0
        r = hm("lab", "agent", "--name", lab.name, "node-0", "start")
        assert r.returncode == 0, r.stderr
        assert (code(lab, "/admin/x"), code(lab, "/ok")) == ("403", "200")
        sock = lab.node(0)["admin_socket"]
        r = hm("ctl", "--socket", sock, "policies", "--json")
        assert [(p["namespace"], p["name"], p["action"]) for p in json.loads(r.stdout)] == [("shop", "no-admin", "DENY")]

        # start with a policy directory: a valid DENY file and a bad file beside it
        assert hm("lab", "agent", "--name", lab.name, "node-0", "stop").returncode == 0
        state = Path(sock).parent
        (state / "policies.json").unlink()  # only the directory this time
        pdir = state / "policy-dir"
        pdir.mkdir()
        (pdir / "deny.yaml").write_text(DENY_ADMIN)
        (pdir / "typo.yaml").write_text(DENY_ADMIN.replace("no-admin", "other").replace("paths", "pathz"))
        cfg = yaml.safe_load((state / "config.yaml").read_text())
        cfg["policies"] = {"dir": str(pdir)}
        cfg_path = state / "config-with-dir.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        log = tmp_path / "agent.log"
        node = lab.node(0)
        with open(log, "wb") as f:
            proc = subprocess.Popen(["ip", "netns", "exec", node["netns"], PY, "-m", "agent", "--log-format", "json",
                                     "run", "--config", str(cfg_path)], stdout=f, stderr=f)
        try:
            def admin_up():
                try:
                    return lab.admin(0, "GET", "/v1/status")[0] == 200
                except OSError:
                    return False

            wait_for(admin_up, 20)
            wait_for(lambda: code(lab, "/ok") == "200", 20)
            st = lab.admin(0, "GET", "/v1/status")[1]
            assert st["ready"] is False
            assert st["problems"] == [{"source": str(pdir / "typo.yaml"), "error":
                                       f"{pdir / 'typo.yaml'}:7: spec.rules[0].to[0].operation.pathz: unknown field"}]
            assert code(lab, "/admin/x") == "403"  # the valid DENY is in force
            r = ns_run(node["netns"], "curl", "-s", "-w", " %{http_code}", "http://127.0.0.1:15021/healthz/ready")
            assert r.stdout.startswith(f"policy source rejected: {pdir / 'typo.yaml'}:7:") and r.stdout.endswith(" 503")
            r = ns_run(node["netns"], PY, "-m", "agent", "doctor", "--config", str(cfg_path), timeout=60)
            assert f"policy source rejected, node not ready: {pdir / 'typo.yaml'}:7:" in r.stdout, r.stdout + r.stderr
            time.sleep(0.2)
            assert "NOT ready" in log.read_text()

            # the operator fixes the file and reloads: ready, both policies in force
            (pdir / "typo.yaml").write_text(DENY_ADMIN.replace("no-admin", "other"))
            assert lab.admin(0, "POST", "/v1/reload")[0] == 200
            st = lab.admin(0, "GET", "/v1/status")[1]
            assert st["ready"] is True and st["problems"] == [] and st["counts"]["policies"] == 2
        finally:
            proc.terminate()
            proc.wait(timeout=30)
