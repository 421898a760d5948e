"""`hostmesh ctl` as a newcomer meets it (issue 21): the real command against a real
admin socket (fake agent); exact messages and exit codes (0 ok, 1 refused/unreachable,
2 usage), never a traceback, never a Python dict."""

import json
import os
import subprocess
import sys

import trio

from agent.admin.server import serve_admin
from agent.cli import ctl_views
from agent.config import AdminConfig
from tests.unit.fake_agent import FakeAgent

POLICIES = ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            "metadata: {name: a, namespace: shop}\nspec: {}\n---\n"
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            "metadata: {name: b, namespace: shop, annotations: {istio.io/dry-run: 'true'}}\n"
            "spec: {action: DENY, rules: [{}]}\n")


class RicherAgent(FakeAgent):
    def stats(self):
        return {"counters": {"refused_no_policy": 2}, "gauges": {"workloads": 1},
                "telemetry": {"queue_depth": 0, "kafka": {"sent": 3, "connected": True}}}

    def certs(self):
        return [{"identity": "spiffe://cluster.local/ns/shop/sa/web", "state": "available", "serial": "abc",
                 "issuer": "CN=node-0", "not_after": "2026-12-02T08:00:00+00:00", "expires_in_s": 86000}]

    async def reload(self):
        return {"policy_files": 1, "connections_closed": 0}


def ctl(sock, *args, env=None):
    return subprocess.run([sys.executable, "-m", "agent", "ctl", *(["--socket", sock] if sock else []), *args],
                          capture_output=True, text=True, timeout=30, env=env)


def _no_traceback(r):
    assert "Traceback" not in r.stderr and "Error:" not in r.stderr.split(":", 1)[0], r.stderr


async def test_messages_and_exit_codes(tmp_path):
    agent = RicherAgent()
    sock = str(tmp_path / "a.sock")
    pol = tmp_path / "p.yaml"
    pol.write_text(POLICIES)
    (tmp_path / "bad.json").write_text("{nope")

    async with trio.open_nursery() as n:
        await n.start(serve_admin, agent, AdminConfig(socket=sock))

        def run_all():
            out = {}
            out["apply_missing"] = ctl(sock, "policies", "apply", str(tmp_path / "missing.yaml"))
            out["add_missing"] = ctl(sock, "workloads", "add", "--file", str(tmp_path / "missing.json"))
            out["add_badjson"] = ctl(sock, "workloads", "add", "--file", str(tmp_path / "bad.json"))
            out["add_label"] = ctl(sock, "workloads", "add", "--uid", "u", "--name", "n", "--ip", "198.19.0.2",
                                   "--label", "bad")
            out["add_none"] = ctl(sock, "workloads", "add")
            out["del_noref"] = ctl(sock, "policies", "delete", "nosuch")
            out["del_unknown"] = ctl(sock, "policies", "delete", "shop/nosuch")
            out["dir"] = ctl(str(tmp_path), "status")
            out["env"] = ctl(None, "status", env={**os.environ, "HOSTMESH_ADMIN_SOCKET": sock})
            out["apply"] = ctl(sock, "policies", "apply", str(pol))
            out["policies"] = ctl(sock, "policies")
            pol.write_text(POLICIES.split("---")[0])
            out["prune"] = ctl(sock, "policies", "apply", "--prune", str(pol))
            out["after_prune"] = ctl(sock, "--json", "policies")
            out["reload"] = ctl(sock, "reload")
            out["drain"] = ctl(sock, "drain")
            out["stats"] = ctl(sock, "stats")
            out["certs"] = ctl(sock, "certs")
            out["status"] = ctl(sock, "status")
            out["help"] = ctl(sock, "--help")
            return out

        out = await trio.to_thread.run_sync(run_all)
        n.cancel_scope.cancel()

    for r in out.values():
        _no_traceback(r)
    expect = {
        "apply_missing": (2, f"hostmesh ctl: {tmp_path}/missing.yaml: no such file\n"),
        "add_missing": (2, f"hostmesh ctl: {tmp_path}/missing.json: no such file\n"),
        "add_label": (2, "hostmesh ctl: --label 'bad': use KEY=VALUE\n"),
        "add_none": (2, "hostmesh ctl: workloads add: missing --uid, --name, --ip (or give --file BODY.json)\n"),
        "del_noref": (2, "hostmesh ctl: policies delete 'nosuch': give NAMESPACE/NAME (hostmesh ctl policies lists them)\n"),
        "del_unknown": (1, "hostmesh ctl: 404: no such policy\n"),
        "dir": (1, f"hostmesh ctl: {tmp_path}: is a directory, not the agent's admin socket (see admin.socket)\n"),
    }
    for key, (code, err) in expect.items():
        assert (out[key].returncode, out[key].stderr) == (code, err), key
    assert out["add_badjson"].returncode == 2
    assert out["add_badjson"].stderr.startswith(f"hostmesh ctl: {tmp_path}/bad.json: not JSON: ")
    assert out["env"].returncode == 0 and "node" in out["env"].stdout
    assert out["apply"].stdout == "applied shop/a, shop/b\n"
    rows = out["policies"].stdout.splitlines()
    assert rows[2].split()[:4] == ["AuthorizationPolicy", "shop", "a", "ALLOW"]
    assert rows[3].split()[:5] == ["AuthorizationPolicy", "shop", "b", "DENY", "(dry-run)"]
    assert out["prune"].stdout == "applied shop/a\npruned shop/b\n"
    assert [p["name"] for p in json.loads(out["after_prune"].stdout)] == ["a"]
    assert out["reload"].stdout == "reload: ok\npolicy_files:       1\nconnections_closed: 0\n"
    assert out["drain"].stdout == "drain: ok\ndraining: yes\n"
    assert out["stats"].stdout == ("[counters]\nrefused_no_policy: 2\n\n[gauges]\nworkloads: 1\n\n"
                                   "[telemetry]\nqueue_depth:     0\nkafka.sent:      3\nkafka.connected: yes\n")
    head = out["certs"].stdout.splitlines()[0].split()
    assert "issuer" in head and "CN=node-0" in out["certs"].stdout
    # keys padded to the longest ("workloads"), values in one column
    assert out["status"].stdout == ("node:      fake\nversion:   0\nuptime_s:  1\nready:     yes\n"
                                    "workers:   1\nworkloads: 0\n")
    for sub in ("status", "certs", "stats", "reload", "drain", "workloads", "policies", "connections", "logging"):
        assert sub in out["help"].stdout
    assert "HOSTMESH_ADMIN_SOCKET" in out["help"].stdout


def test_views_never_print_python_reprs():
    text = ctl_views.stats({"telemetry": {"otlp": {"exported": 1, "errors": {"timeout": 2}}, "kafka": None}})
    assert text == "[telemetry]\notlp.exported:       1\notlp.errors.timeout: 2\nkafka:               -"
    assert "{" not in ctl_views.action("reload", {"a": {"b": [1, 2]}})
