"""Every admin change leaves one line in the agent's log (issue 21: an audit trail):
who (pid, uid from SO_PEERCRED), what (method, path, outcome), and refusals too."""

import logging
import os

import trio

from agent.admin.client import AdminClient
from agent.admin.server import serve_admin
from agent.config import AdminConfig
from tests.unit.fake_agent import FakeAgent

POLICY = ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
          "metadata: {name: p, namespace: shop}\nspec: {}\n")
BODY = {"uid": "u1", "name": "web", "namespace": "shop", "service_account": "web", "ip": "198.19.0.2"}


async def test_admin_changes_are_audited(tmp_path, caplog):
    path = str(tmp_path / "admin.sock")

    def calls():
        c = AdminClient(path)
        c.request("GET", "/v1/status")
        c.request("POST", "/v1/workloads", BODY)
        c.request("PUT", "/v1/policies", POLICY, "application/yaml", headers={"x-source": "/etc/p.yaml"})
        c.request("DELETE", "/v1/policies/shop/nosuch")
        c.request("POST", "/v1/reload")
        c.request("POST", "/v1/drain")
        c.request("DELETE", "/v1/workloads/u1")

    caplog.set_level(logging.INFO, logger="hostmesh.admin")
    async with trio.open_nursery() as n:
        await n.start(serve_admin, FakeAgent(), AdminConfig(socket=path))
        await trio.to_thread.run_sync(calls)
        n.cancel_scope.cancel()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "hostmesh.admin"]
    assert lines == [
        ("INFO", "admin POST /v1/workloads -> 201: uid u1"),
        ("INFO", "admin PUT /v1/policies -> 200: applied shop/p"),
        ("WARNING", "admin DELETE /v1/policies/shop/nosuch -> 404: no such policy"),
        ("INFO", "admin POST /v1/reload -> 200: ok"),
        ("INFO", "admin POST /v1/drain -> 200: draining=True"),
        ("INFO", "admin DELETE /v1/workloads/u1 -> 200: uid u1"),
    ]
    rec = next(r for r in caplog.records if "policies ->" in r.getMessage())
    assert (rec.caller_uid, rec.caller_pid, rec.source) == (os.getuid(), os.getpid(), "/etc/p.yaml")
