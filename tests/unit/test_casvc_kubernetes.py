"""The CA service in Kubernetes mode against a fake API server (plain HTTP on loopback,
the real TokenReview and pod list/watch shapes): bearer tokens of trusted node accounts
get certificates for identities with a pod on the caller's pod's node, and the view
follows the pod watch."""

import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.casvc import podview
from agent.casvc.server import CaService, build_server
from agent.identity import store
from agent.identity.caclient import CaClient, CaError, CaTarget

TD = "cluster.local"
WEB = f"spiffe://{TD}/ns/shop/sa/web"
DB = f"spiffe://{TD}/ns/data/sa/db-sa"


def pod(name, ns, sa, node, uid, phase="Running"):
    return {"metadata": {"name": name, "namespace": ns, "uid": uid},
            "spec": {"serviceAccountName": sa, "nodeName": node}, "status": {"phase": phase}}


PODS = [pod("ztunnel-a", "istio-system", "ztunnel", "node-0", "u-z0"), pod("web-1", "shop", "web", "node-0", "u-w"),
        pod("db-1", "data", "db-sa", "node-1", "u-d"), pod("old", "data", "db-sa", "node-0", "u-o", "Succeeded")]
USERS = {
    "tok-node0": ("system:serviceaccount:istio-system:ztunnel", "ztunnel-a", "u-z0"),
    "tok-web": ("system:serviceaccount:shop:web", "web-1", "u-w"),
    "tok-gone": ("system:serviceaccount:istio-system:ztunnel", "ztunnel-b", "u-z9"),
}


class FakeApi:
    def __init__(self):
        self.events: queue.Queue = queue.Queue()
        self.reviews: list[dict] = []
        api = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _json(self, doc):
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802
                review = json.loads(self.rfile.read(int(self.headers["content-length"])))
                api.reviews.append(review)
                u = USERS.get(review["spec"]["token"])
                status = {"authenticated": False, "error": "invalid bearer token"} if u is None else {
                    "authenticated": True, "audiences": review["spec"]["audiences"],
                    "user": {"username": u[0], "extra": {"authentication.kubernetes.io/pod-name": [u[1]],
                                                         "authentication.kubernetes.io/pod-uid": [u[2]]}}}
                self._json({"kind": "TokenReview", "status": status})

            def do_GET(self):  # noqa: N802
                if "watch=1" not in self.path:
                    return self._json({"kind": "PodList", "metadata": {"resourceVersion": "10"}, "items": PODS})
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    try:
                        ev = api.events.get(timeout=0.05)
                    except queue.Empty:
                        continue
                    line = json.dumps(ev).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def kube_ca(tmp_path):
    api = FakeApi()
    d = tmp_path / "ca"
    store.init_dir(d, TD)
    cfg = tmp_path / "ca.yaml"
    cfg.write_text(f"listen: 127.0.0.1:0\nsigning: {{cert: {d}/root.pem, key: {d}/root.key}}\n"
                   f"server_names: [127.0.0.1]\naudit_log: {tmp_path}/audit.jsonl\n"
                   f"kubernetes: {{api_server: 'http://127.0.0.1:{api.port}', token_path: {tmp_path}/none,\n"
                   f"             trusted_node_accounts: [istio-system/ztunnel]}}\n")
    svc = CaService(str(cfg))
    assert svc.kube.synced.wait(5)
    server, port = build_server(svc)
    server.start()
    yield svc, api, d, port, tmp_path
    server.stop(0).wait()
    svc.kube.stop()
    api.httpd.shutdown()


def client(d, port, tmp_path, token: str | None) -> CaClient:
    path = None
    if token:
        path = tmp_path / f"{token}.jwt"
        path.write_text(token + "\n")
    return CaClient(CaTarget(f"127.0.0.1:{port}", (d / "root.pem").read_bytes(), token_path=str(path) if path else None))


def test_bearer_tokens_and_the_pod_view(kube_ca):
    svc, api, d, port, tmp = kube_ca
    node0 = client(d, port, tmp, "tok-node0")
    assert node0.fetch(WEB, 600)[2]
    assert api.reviews[0]["spec"]["audiences"] == ["istio-ca"]
    with pytest.raises(CaError, match="PERMISSION_DENIED: identity_not_on_node"):
        node0.fetch(DB, 600)  # db runs on node-1 (and the finished pod on node-0 does not count)
    cases = [(None, "UNAUTHENTICATED: no_credential"), ("tok-web", "UNAUTHENTICATED: token_not_trusted_account"),
             ("tok-gone", "UNAUTHENTICATED: token_pod_unknown"), ("tok-bad", "UNAUTHENTICATED: token_invalid")]
    for token, want in cases:
        with pytest.raises(CaError, match=want):
            client(d, port, tmp, token).fetch(WEB, 600)
    # a db pod is scheduled on node-0: the watch brings it into the view
    api.events.put({"type": "ADDED", "object": pod("db-2", "data", "db-sa", "node-0", "u-d2")})
    deadline = time.monotonic() + 5
    while DB not in svc.kube.current()[0].get("node-0", ()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert node0.fetch(DB, 600)[2]
    api.events.put({"type": "DELETED", "object": pod("db-2", "data", "db-sa", "node-0", "u-d2")})
    deadline = time.monotonic() + 5
    while DB in svc.kube.current()[0].get("node-0", ()) and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(CaError, match="identity_not_on_node"):
        node0.fetch(DB, 600)
    assert svc.counters["issued"] == 2 and svc.counters["refused_no_credential"] == 1


def test_pod_view_is_pure_and_skips_unscheduled_and_finished_pods():
    pods = {}
    for ev in ({"type": "ADDED", "object": pod("a", "shop", "web", "n0", "1")},
               {"type": "ADDED", "object": pod("b", "shop", "web", "n1", "2", "Failed")},
               {"type": "ADDED", "object": {"metadata": {"name": "c", "uid": "3"}, "spec": {}, "status": {}}},
               {"type": "MODIFIED", "object": pod("a", "shop", "web", "n0", "1")}):
        podview.apply_event(pods, ev)
    on, where = podview.view(pods, TD)
    assert on == {"n0": frozenset({WEB})} and where == {("a", "1"): "n0"}
    podview.apply_event(pods, {"type": "DELETED", "object": pod("a", "shop", "web", "n0", "1")})
    assert podview.view(pods, TD) == ({}, {})
