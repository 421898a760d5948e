"""`hostmesh ctl` against a real admin socket (fake agent): tables, --json, exit codes."""

import json
import subprocess
import sys

import trio

from agent.admin.server import serve_admin
from agent.config import AdminConfig
from tests.unit.fake_agent import FakeAgent

POLICY = ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
          "metadata: {name: p, namespace: shop}\nspec: {}\n")


def ctl(sock, *args):
    return subprocess.run([sys.executable, "-m", "agent", "ctl", "--socket", sock, *args], capture_output=True,
                          text=True, timeout=30)


async def test_ctl_subcommands_and_exit_codes(tmp_path):
    agent = FakeAgent()
    sock = str(tmp_path / "a.sock")
    (tmp_path / "p.yaml").write_text(POLICY)
    (tmp_path / "bad.yaml").write_text(POLICY.replace("spec: {}", "spec: {action: NO}"))

    async with trio.open_nursery() as n:
        await n.start(serve_admin, agent, AdminConfig(socket=sock))

        def run_all():
            out = {}
            out["status"] = ctl(sock, "status")
            out["status_json"] = ctl(sock, "--json", "status")
            out["add"] = ctl(sock, "workloads", "add", "--uid", "u1", "--name", "web", "--namespace", "shop",
                             "--service-account", "web", "--ip", "198.19.0.2", "--label", "app=web", "--http-port", "8080")
            out["list"] = ctl(sock, "workloads")
            out["apply"] = ctl(sock, "policies", "apply", str(tmp_path / "p.yaml"))
            out["bad"] = ctl(sock, "policies", "apply", str(tmp_path / "bad.yaml"))
            out["policies"] = ctl(sock, "--json", "policies")
            out["delete"] = ctl(sock, "policies", "delete", "shop/p")
            out["logging"] = ctl(sock, "logging", "debug")
            out["remove"] = ctl(sock, "workloads", "remove", "u1")
            out["remove_again"] = ctl(sock, "workloads", "remove", "u1")
            out["down"] = ctl(str(tmp_path / "none.sock"), "status")
            return out

        out = await trio.to_thread.run_sync(run_all)
        n.cancel_scope.cancel()

    assert out["status"].returncode == 0 and "node:      fake" in out["status"].stdout
    assert json.loads(out["status_json"].stdout)["node"] == "fake"
    assert out["add"].returncode == 0 and "registered u1" in out["add"].stdout
    assert "web" in out["list"].stdout and "198.19.0.2" in out["list"].stdout
    assert out["apply"].returncode == 0 and "shop/p" in out["apply"].stdout
    assert out["bad"].returncode == 1 and "bad.yaml:4: spec.action" in out["bad"].stderr
    assert [p["name"] for p in json.loads(out["policies"].stdout)] == ["p"]
    assert out["delete"].returncode == 0 and agent.level == "debug"
    assert out["remove"].returncode == 0 and out["remove_again"].returncode == 1
    assert out["down"].returncode == 1 and "no such socket" in out["down"].stderr
    assert len(agent.registry) == 0 and len(agent.policies) == 0
