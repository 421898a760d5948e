"""The admin API over a real unix socket (agent.admin), against a faithful fake agent."""

import json
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.admin.client import AdminClient, AdminUnavailable
from agent.admin.routes import route
from agent.admin.server import serve_admin
from agent.config import AdminConfig
from tests.unit.fake_agent import FakeAgent

POLICY = ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
          "metadata: {name: p, namespace: shop}\nspec: {}\n")
BODY = {"uid": "u1", "name": "web", "namespace": "shop", "service_account": "web", "ip": "198.19.0.2",
        "labels": {"app": "web"}, "http_ports": [8080]}


@pytest.mark.parametrize("method, path, handler, status", [
    ("GET", "/v1/status", "status", 200), ("POST", "/v1/workloads", "add_workload", 200),
    ("DELETE", "/v1/workloads/abc", "remove_workload", 200), ("DELETE", "/v1/policies/a/b", "delete_policy", 200),
    ("GET", "/v1/nope", None, 404), ("POST", "/v1/status", None, 405), ("PUT", "/v1/logging", "set_log_level", 200),
])
def test_routes(method, path, handler, status):
    m = route(method, path)
    assert (m.handler, m.status) == (handler, status)


async def with_server(tmp_path, fn, **cfg):
    agent = FakeAgent()
    path = str(tmp_path / "admin.sock")
    async with trio.open_nursery() as n:
        await n.start(serve_admin, agent, AdminConfig(socket=path, **cfg))
        await fn(agent, path)
        n.cancel_scope.cancel()


def call(path, *a, **kw):
    return trio.to_thread.run_sync(lambda: AdminClient(path).request(*a, **kw))


async def test_every_endpoint(tmp_path):
    async def go(agent, path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert (await call(path, "GET", "/v1/status"))[0] == 200
        code, body = await call(path, "POST", "/v1/workloads", BODY)
        assert code == 201 and body["uid"] == "u1"
        assert [w["uid"] for w in (await call(path, "GET", "/v1/workloads"))[1]] == ["u1"]
        code, body = await call(path, "PUT", "/v1/policies", POLICY, "application/yaml")
        assert code == 200 and body["applied"] == ["shop/p"]
        assert (await call(path, "GET", "/v1/policies"))[1][0]["name"] == "p"
        assert (await call(path, "DELETE", "/v1/policies/shop/p"))[0] == 200
        assert (await call(path, "DELETE", "/v1/policies/shop/p"))[0] == 404
        assert (await call(path, "PUT", "/v1/logging?level=debug"))[1] == {"level": "debug"}
        assert (await call(path, "PUT", "/v1/logging?level=loud"))[0] == 400
        for p in ("/v1/certs", "/v1/connections", "/v1/stats", "/v1/config_dump"):
            assert (await call(path, "GET", p))[0] == 200
        assert (await call(path, "POST", "/v1/reload"))[0] == 200 and agent.reloads == 1
        assert (await call(path, "POST", "/v1/drain"))[0] == 200 and agent.drains == 1
        assert (await call(path, "DELETE", "/v1/workloads/u1"))[0] == 200
        code, body = await call(path, "DELETE", "/v1/workloads/u1")
        assert code == 404 and body["error"]["code"] == "not_found"

    await with_server(tmp_path, go)


async def test_errors_are_json_with_status(tmp_path):
    async def go(agent, path):
        code, body = await call(path, "POST", "/v1/workloads", b"{not json")
        assert code == 400 and body["error"]["code"] == "invalid_json"
        code, body = await call(path, "PUT", "/v1/policies", POLICY.replace("spec: {}", "spec: {action: NO}"))
        assert code == 400 and body["error"]["message"].startswith("admin-api:4: spec.action")
        assert (await call(path, "GET", "/v1/missing"))[0] == 404
        assert (await call(path, "DELETE", "/v1/status"))[0] == 405
        code, _ = await call(path, "PUT", "/v1/policies", b"x" * (2 << 20))
        assert code == 413
        assert len(agent.registry) == 0 and len(agent.policies) == 0

    await with_server(tmp_path, go, max_body_bytes=1 << 20)


async def test_malformed_http_gets_400(tmp_path):
    async def go(agent, path):
        def raw():
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.sendall(b"BLAH\r\n\r\n")
            return s.recv(100)

        assert (await trio.to_thread.run_sync(raw)).startswith(b"HTTP/1.1 400")

    await with_server(tmp_path, go)


async def test_100_concurrent_clients_all_answered(tmp_path):
    async def go(agent, path):
        results = []

        async def one(i):
            results.append(await call(path, "POST", "/v1/workloads", {**BODY, "uid": f"u{i}", "ip": f"198.19.1.{i}"}))

        async with trio.open_nursery() as n:
            for i in range(100):
                n.start_soon(one, i)
        assert sorted(c for c, _ in results) == [201] * 100
        assert len(agent.registry) == 100

    await with_server(tmp_path, go)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another uid")
async def test_unprivileged_caller_is_refused(tmp_path):
    async def go(agent, path):
        def as_nobody() -> str:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # child: drop to nobody, try the API, report, exit
                try:
                    os.setgid(65534)
                    os.setuid(65534)
                    try:
                        out = str(AdminClient(path, timeout=5).request("GET", "/v1/status")[0])
                    except AdminUnavailable as e:
                        out = f"unavailable {e}"
                    os.write(w, out.encode())
                finally:
                    os._exit(0)
            os.close(w)
            os.waitpid(pid, 0)
            out = os.read(r, 1000).decode()
            os.close(r)
            return out

        assert "permission denied" in await trio.to_thread.run_sync(as_nobody)  # 0600 socket
        os.chmod(path, 0o666)  # even when the file mode lets it in, SO_PEERCRED refuses
        assert await trio.to_thread.run_sync(as_nobody) == "403"

    # a directory other users may traverse (pytest's tmp_path is private to root)
    d = tempfile.mkdtemp(prefix="hostmesh-admin-test-", dir="/run")
    os.chmod(d, 0o755)
    try:
        await with_server(Path(d), go)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_unreachable_socket_is_a_clear_error(tmp_path):
    with pytest.raises(AdminUnavailable, match="no such socket"):
        AdminClient(str(tmp_path / "none.sock")).request("GET", "/v1/status")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.binary(max_size=200), st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=10)))
def test_random_bodies_never_crash_or_change_state(tmp_path, body):
    async def go(agent, path):
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        code, _ = await call(path, "POST", "/v1/workloads", payload)
        if code != 201:
            assert code == 400 and len(agent.registry) == 0
        code, _ = await call(path, "PUT", "/v1/policies", payload)
        if code != 200:
            assert code == 400 and len(agent.policies) == 0
        assert (await call(path, "GET", "/v1/status"))[0] == 200

    sub = tmp_path / f"h{os.urandom(4).hex()}"
    sub.mkdir()
    trio.run(with_server, sub, go)
