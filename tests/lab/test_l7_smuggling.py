"""The L7 path against a real upstream (nginx): request smuggling and framing vectors
sent raw from a pod on the other node through a DENY-`/admin*` policy. Differential:
nginx's own access log says which requests reached it, and none may be one the policy
denies; the destination agent survives every vector (same pid, still serving); HTTP/1.0
with curl works with and without keep-alive."""

from pathlib import Path

import pytest

from tests.lab.conftest import PY, hm, lab_up, ns_run, wait_for, wait_listen
from tests.lab.test_mesh import DENY_ADMIN_PATH as DENY_ADMIN

TOPOLOGY = """\
nodes: 2
pods:
  - {name: web, namespace: shop, service_account: web-sa, labels: {app: web}, node: 0, http_ports: [8080]}
  - {name: client, namespace: front, service_account: client-sa, labels: {app: client}, node: 1}
"""
NGINX = """\
user root;
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx.err;
events {{ worker_connections 256; }}
http {{
  log_format raw '$request_method|$request_uri|$uri|$server_protocol';
  access_log {dir}/access.log raw;
  client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};
  uwsgi_temp_path {dir}; scgi_temp_path {dir};
  server {{ listen 8080; location / {{ return 200 "ok\\n"; }} }}
}}
"""
W = b"Host: web\r\n"
# name -> raw bytes; every vector tries to get a request for /admin to nginx
VECTORS = {
    "cl_te": b"POST /a HTTP/1.1\r\n" + W + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
             b"GET /admin/cl-te HTTP/1.1\r\n" + W + b"\r\n",
    "te_cl": b"POST /a HTTP/1.1\r\n" + W + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
             b"2e\r\nGET /admin/te-cl HTTP/1.1\r\nHost: web\r\nX: 1\r\n\r\n\r\n0\r\n\r\n",
    "te_obfuscated_value": b"POST /a HTTP/1.1\r\n" + W + b"Transfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\n"
                           b"0\r\n\r\nGET /admin/te1 HTTP/1.1\r\n" + W + b"\r\n",
    "te_space_before_colon": b"POST /a HTTP/1.1\r\n" + W + b"Transfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n"
                             b"0\r\n\r\nGET /admin/te2 HTTP/1.1\r\n" + W + b"\r\n",
    "te_tab": b"POST /a HTTP/1.1\r\n" + W + b"Transfer-Encoding:\tchunked\r\n\r\n"
              b"0\r\n\r\nGET /admin/te3 HTTP/1.1\r\n" + W + b"\r\n",
    "te_twice": b"POST /a HTTP/1.1\r\n" + W + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
                b"0\r\n\r\nGET /admin/te4 HTTP/1.1\r\n" + W + b"\r\n",
    "te_folded": b"POST /a HTTP/1.1\r\n" + W + b"Transfer-Encoding:\r\n chunked\r\nContent-Length: 4\r\n\r\n"
                 b"0\r\n\r\nGET /admin/te5 HTTP/1.1\r\n" + W + b"\r\n",
    "cl_duplicate": b"POST /a HTTP/1.1\r\n" + W + b"Content-Length: 0\r\nContent-Length: 31\r\n\r\n"
                    b"GET /admin/cl2 HTTP/1.1\r\nX: 1\r\n\r\n",
    "cl_list": b"POST /a HTTP/1.1\r\n" + W + b"Content-Length: 31, 0\r\n\r\nGET /admin/cl3 HTTP/1.1\r\nX: 1\r\n\r\n",
    "lf_only": b"GET /ok HTTP/1.1\nHost: web\n\nGET /admin/lf HTTP/1.1\nHost: web\n\n",
    "bare_cr": b"GET /ok HTTP/1.1\rHost: web\r\n\r\nGET /admin/cr HTTP/1.1\r\n" + W + b"\r\n",
    "obs_fold": b"GET /ok HTTP/1.1\r\n" + W + b"X-A: 1\r\n GET /admin/fold HTTP/1.1\r\n\r\n",
    "chunk_ext": b"POST /a HTTP/1.1\r\n" + W + b"Transfer-Encoding: chunked\r\n\r\n"
                 b"3;ext=\"a\r\nb\"\r\nabc\r\n0\r\n\r\nGET /admin/ext HTTP/1.1\r\n" + W + b"\r\n",
    "chunk_ext_lf": b"POST /a HTTP/1.1\r\n" + W + b"Transfer-Encoding: chunked\r\n\r\n"
                    b"3;x\nabc\r\n0\r\n\r\nGET /admin/ext2 HTTP/1.1\r\n" + W + b"\r\n",
    "chunk_size_overflow": b"POST /a HTTP/1.1\r\n" + W + b"Transfer-Encoding: chunked\r\n\r\n"
                           b"10000000000000003\r\nabc\r\n0\r\n\r\nGET /admin/big HTTP/1.1\r\n" + W + b"\r\n",
    "nul_in_header": b"GET /ok HTTP/1.1\r\n" + W + b"X-A: a\x00b\r\n\r\nGET /admin/nul HTTP/1.1\r\n" + W + b"\r\n",
    "nul_in_name": b"GET /ok HTTP/1.1\r\n" + W + b"X\x00A: a\r\n\r\nGET /admin/nul2 HTTP/1.1\r\n" + W + b"\r\n",
    "pipelining": b"GET /ok1 HTTP/1.1\r\n" + W + b"\r\nGET /admin/pipe HTTP/1.1\r\n" + W + b"\r\n"
                  b"GET /ok2 HTTP/1.1\r\n" + W + b"\r\n",
    "upgrade_refused": b"GET /ok HTTP/1.1\r\n" + W + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                       b"GET /admin/upg HTTP/1.1\r\n" + W + b"\r\n",
    "h2c_upgrade": b"GET /ok HTTP/1.1\r\n" + W + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                   b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\nGET /admin/h2c HTTP/1.1\r\n" + W + b"\r\n",
    "http10_keepalive": b"GET /ok HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /admin/ka HTTP/1.0\r\n\r\n",
    "http09": b"GET /admin/09\r\n\r\n",
    "dot_segments": b"GET /public/../admin/dots HTTP/1.1\r\n" + W + b"\r\n",
    "percent_unreserved": b"GET /%61dmin/pct HTTP/1.1\r\n" + W + b"\r\n",
    "encoded_dots": b"GET /x/%2e%2e/admin/pct2 HTTP/1.1\r\n" + W + b"\r\n",
    "backslash": b"GET \\admin\\bs HTTP/1.1\r\n" + W + b"\r\n",
    "absolute_form": b"GET http://web/admin/abs HTTP/1.1\r\n" + W + b"\r\n",
    "lowercase_method": b"get /admin/lc HTTP/1.1\r\n" + W + b"\r\n",
    "expect_continue_denied": b"POST /admin/exp HTTP/1.1\r\n" + W + b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n"
                              b"HELLOGET /admin/after HTTP/1.1\r\n" + W + b"\r\n",
}
SEND = """
import socket, sys
s = socket.create_connection((sys.argv[1], 8080), 5)
s.sendall(bytes.fromhex(sys.argv[2]))
s.settimeout(1.5)
out = b""
try:
    while (d := s.recv(65536)):
        out += d
except (TimeoutError, ConnectionResetError):
    pass
print(out.decode("latin-1").split("\\r\\n")[0] if out else "<nothing>")
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with lab_up("asmuggle", topology=TOPOLOGY, tmp=tmp_path_factory.mktemp("asmuggle")) as lab:
        work = Path(f"/run/hostmesh/lab/{lab.name}/nginx")
        work.mkdir(parents=True, exist_ok=True)
        (work / "nginx.conf").write_text(NGINX.format(dir=work))
        lab.spawn(lab.pod("web")["netns"], "nginx", "-c", str(work / "nginx.conf"))
        wait_listen(lab.pod("web")["netns"], 8080)
        lab.apply(DENY_ADMIN)
        lab.nginx_log = work / "access.log"
        yield lab


def _reached(lab) -> list[list[str]]:
    if not lab.nginx_log.exists():
        return []
    return [ln.split("|") for ln in lab.nginx_log.read_text(errors="replace").splitlines()]


def _pid(lab) -> int:
    lab.refresh()
    return lab.node(0)["agent_pid"]


def test_no_denied_request_reaches_nginx_and_the_agent_survives_every_vector(lab):
    client, web = lab.pod("client")["netns"], lab.pod("web")["ip"]
    pid = _pid(lab)
    assert pid
    firsts = {}
    for name, raw in VECTORS.items():
        r = ns_run(client, PY, "-c", SEND, web, raw.hex(), timeout=20)
        firsts[name] = r.stdout.strip()
        # the agent is still there and still serves, after every single vector
        ok = ns_run(client, "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", f"http://{web}:8080/ok")
        assert ok.stdout == "200", (name, ok.stdout, ok.stderr)
    assert _pid(lab) == pid
    reached = _reached(lab)
    leaked = [r for r in reached if "admin" in r[1].lower() or r[2].lower().startswith("/admin")]
    assert leaked == [], (leaked, firsts)
    # what each vector was answered (framing refusals 400, denials 403). The core's
    # HTTP/1.1 (hyper) decides three edges by RFC 9112 where h11 answered otherwise:
    # Transfer-Encoding with Content-Length is framed by the Transfer-Encoding alone,
    # the Content-Length removed, and the connection closed after the answer (6.3 (3));
    # a Transfer-Encoding whose final coding is not chunked is a 400 (6.3 (4), h11: 501);
    # a target starting with a backslash is no request-target form (3.2): 400 (h11 let
    # pathnorm deny it; backslashes inside an origin-form path are still normalized)
    for name in ("cl_duplicate", "cl_list", "te_folded", "obs_fold", "lowercase_method", "te_obfuscated_value",
                 "backslash"):
        assert firsts[name].startswith("HTTP/1.1 400"), (name, firsts[name])
    for name in ("cl_te", "te_cl"):
        assert firsts[name].startswith("HTTP/1.1 200"), (name, firsts[name])
    for name in ("dot_segments", "percent_unreserved", "encoded_dots", "absolute_form"):
        assert firsts[name].startswith("HTTP/1.1 403"), (name, firsts[name])
    # the allowed requests in the pipelines did reach nginx, in order, normalized
    uris = [r[1] for r in reached]
    assert "/ok1" in uris and "/ok2" in uris and uris.index("/ok1") < uris.index("/ok2")
    # the source's agent reads the same HTTP port for its metrics and refuses what cannot
    # be framed too, so the refusals are counted where each was made: summed over both
    stats = [lab.stats(0), lab.stats(1)]
    assert sum(s.get("http_refused_400", 0) for s in stats) >= 7, stats
    assert all(s.get("connection_errors", 0) == 0 for s in stats), stats


def test_curl_http10_with_and_without_keepalive(lab):
    client, web = lab.pod("client")["netns"], lab.pod("web")["ip"]
    pid = _pid(lab)
    before = len(_reached(lab))
    r = ns_run(client, "curl", "-s", "-v", "--http1.0", "-m", "5", "-w", " %{http_code}\n",
               f"http://{web}:8080/ten")
    assert r.stdout.split() == ["ok", "200"], r.stdout + r.stderr
    r = ns_run(client, "curl", "-s", "-v", "--http1.0", "-H", "Connection: keep-alive", "-m", "5",
               "-w", " %{http_code}\n", f"http://{web}:8080/ten-ka1", f"http://{web}:8080/ten-ka2")
    assert r.stdout.split() == ["ok", "200", "ok", "200"], r.stdout + r.stderr
    r = ns_run(client, "curl", "-s", "--http1.0", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
               f"http://{web}:8080/admin/x")
    assert r.stdout == "403"
    wait_for(lambda: len(_reached(lab)) >= before + 3, 5)
    reached = _reached(lab)[before:]
    assert [r[1] for r in reached] == ["/ten", "/ten-ka1", "/ten-ka2"]
    assert _pid(lab) == pid
    log = Path(lab.node(0)["admin_socket"]).parent / "agent.log"
    assert "I only send HTTP/1.1" not in log.read_text(errors="replace")


def test_refusals_are_counted_on_metrics(lab):
    # counted on the /metrics of the node that made them: here the source's (its HTTP
    # metrics read the port and refuse the framing vectors first); the destination's core
    # refuses nothing it was sent (a body the client abandons after a complete response
    # just ends the connection, RFC 9112 9.6; h11 counted that as a 400)
    metrics = [ns_run(lab.node(i)["netns"], "curl", "-s", "http://127.0.0.1:15020/metrics").stdout for i in (0, 1)]
    assert any('hostmesh_events_total{event="http_refused_400"}' in m for m in metrics)
    for m in metrics:
        assert 'hostmesh_events_total{event="connection_errors"}' not in m  # nothing escaped a connection


ALLOW_PUBLIC = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: public-only, namespace: shop}
spec:
  rules:
    - to: [{operation: {paths: ["/public/*"]}}]
"""


def test_normalized_paths_are_judged_and_reach_nginx_normalized(lab):
    client, web = lab.pod("client")["netns"], lab.pod("web")["ip"]
    lab.apply(ALLOW_PUBLIC)
    try:
        def get(target: bytes) -> str:
            raw = b"GET " + target + b" HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
            return ns_run(client, PY, "-c", SEND, web, raw.hex(), timeout=20).stdout.strip()

        before = len(_reached(lab))
        answers = {t: get(t) for t in (b"/public/../private", b"/public/%2e%2e/private", b"/public\\..\\private",
                                       b"http://web/public/../private", b"/public/./a/%7Eb/./c?q=1",
                                       b"/public/a//b", b"/%00", b"/public/%zz")}
        assert answers[b"/public/../private"].startswith("HTTP/1.1 403"), answers
        assert answers[b"/public/%2e%2e/private"].startswith("HTTP/1.1 403"), answers
        assert answers[b"/public\\..\\private"].startswith("HTTP/1.1 403"), answers
        assert answers[b"http://web/public/../private"].startswith("HTTP/1.1 403"), answers
        assert answers[b"/public/./a/%7Eb/./c?q=1"].startswith("HTTP/1.1 200"), answers
        assert answers[b"/public/a//b"].startswith("HTTP/1.1 200"), answers  # BASE keeps slashes
        assert answers[b"/%00"].startswith("HTTP/1.1 400") and answers[b"/public/%zz"].startswith("HTTP/1.1 400")
        wait_for(lambda: len(_reached(lab)) >= before + 2, 5)
        assert [r[1] for r in _reached(lab)[before:]] == ["/public/a/~b/c?q=1", "/public/a//b"]
    finally:
        for i in range(2):
            lab.admin(i, "DELETE", "/v1/policies/shop/public-only")


def test_documents_istio_refuses_are_refused_with_their_line(lab, tmp_path):
    before = lab.admin(0, "GET", "/v1/policies")[1]
    bad = tmp_path / "bad.yaml"
    bad.write_text(DENY_ADMIN.replace("no-admin", "other") + "---\n" + """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt, namespace: shop}
spec:
  rules:
    - from:
        - source: {requestPrincipals: ["*"]}
    - to:
        - operation: {}
""")
    r = hm("lab", "apply", "--name", lab.name, str(bad))
    assert r.returncode != 0
    assert f"{bad}:15: spec.rules[0].from[0].source.requestPrincipals: request authentication (JWT) is not " \
           "supported" in r.stderr + r.stdout, r.stderr + r.stdout
    assert f"{bad}:17: spec.rules[1].to[0].operation: operation must not be empty" in r.stderr + r.stdout
    assert lab.admin(0, "GET", "/v1/policies")[1] == before  # nothing from the file applied
