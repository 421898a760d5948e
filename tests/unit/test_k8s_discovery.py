"""Kubernetes discovery against a server that replays real API list and watch responses
(no API server runs here): the registry, peers, services and policies end up exactly as
the replayed cluster describes, through bookmarks, 410 Gone and a dropped watch."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import trio

from agent.app import Agent
from agent.config import Config
from agent.k8s import discovery as disc
from agent.k8s.model import Cache, desired, pod_workload, service_entries

NODE = "node-a"


def pod(name, ip, node=NODE, uid=None, rv="1", labels=None, sa="web", ns="shop", **kw):
    p = {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": name, "namespace": ns, "uid": uid or f"uid-{name}", "resourceVersion": rv,
                      "labels": labels or {"app": name}, "annotations": kw.pop("annotations", {})},
         "spec": {"nodeName": node, "serviceAccountName": sa, "hostNetwork": kw.pop("host_network", False),
                  "containers": [{"name": "c", "image": "x"}]},
         "status": {"phase": kw.pop("phase", "Running"), "podIP": ip, "podIPs": [{"ip": ip}] if ip else []}}
    return p


def node(name, ip, cidr, rv="1"):
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "resourceVersion": rv},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            "status": {"addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]}}


def lst(kind, items, rv):
    return {"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": rv}, "items": items}


# ---- the pure part ------------------------------------------------------------------------


def test_pods_become_workloads_and_others_do_not():
    w = pod_workload(pod("web", "10.1.0.5", annotations={"hostmesh.io/http-ports": "8080, 9090,x"}), NODE)
    assert w == {"uid": "uid-web", "name": "web", "namespace": "shop", "service_account": "web",
                 "ip": "10.1.0.5", "ips": ["10.1.0.5"], "labels": {"app": "web"}, "http_ports": [8080, 9090], "node": None}
    assert pod_workload(pod("far", "10.2.0.5", node="node-b"), NODE)["node"] == "node-b"
    for skipped in (pod("nip", None), pod("hn", "10.0.0.1", host_network=True), pod("done", "10.1.0.6", phase="Succeeded"),
                    pod("out", "10.1.0.7", labels={"hostmesh.io/capture": "disabled"})):
        assert pod_workload(skipped, NODE) is None


def test_services_take_ready_endpoints_and_resolve_named_ports():
    svc = {"metadata": {"name": "api", "namespace": "shop"},
           "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                    "ports": [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"},
                              {"name": "udp", "port": 53, "protocol": "UDP"}]}}
    sl = {"metadata": {"labels": {"kubernetes.io/service-name": "api"}, "namespace": "shop"},
          "ports": [{"name": "http", "port": 8080}],
          "endpoints": [{"addresses": ["10.1.0.5"], "conditions": {"ready": True}},
                        {"addresses": ["10.1.0.6"], "conditions": {"ready": False}}]}
    assert service_entries(svc, [sl]) == [{"name": "api", "namespace": "shop", "vip": "10.96.0.10", "ports": [80],
                                           "endpoints": ["10.1.0.5"], "target_port": 8080}]


def test_a_relist_forgets_what_was_deleted_meanwhile_and_bookmarks_only_move_the_version():
    c = Cache()
    c.replace("pods", [pod("a", "10.1.0.5"), pod("b", "10.1.0.6")], "10")
    assert not c.event("pods", "BOOKMARK", {"metadata": {"resourceVersion": "15"}})
    assert c.versions["pods"] == "15" and len(c.objects["pods"]) == 2
    c.replace("pods", [pod("b", "10.1.0.6")], "20")
    assert set(desired(c, NODE).workloads) == {"uid-b"}


# ---- the shell against a replay server ------------------------------------------------------


class Replay:
    """Scripted API server. ``lists[path]``: list bodies served in turn (the last one
    repeats); ``watches[path]``: per watch request, a list of steps — a dict (an event
    line), ("status", code) (answer with that HTTP status), "drop" (cut the connection
    mid-line), "end" (close the stream); after the scripts, watches hang until shutdown."""

    def __init__(self) -> None:
        self.lists: dict[str, list[dict]] = {}
        self.watches: dict[str, list[list]] = {}
        self.seen: list[tuple[str, dict]] = []
        self.stop = threading.Event()
        replay = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                u = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(u.query).items()}
                replay.seen.append((u.path, q))
                if q.get("watch") in ("true", "1", "True"):
                    return self._watch(u.path)
                bodies = replay.lists.get(u.path)
                if not bodies:
                    return self._send(404, {"kind": "Status", "code": 404, "message": "not found"})
                body = bodies.pop(0) if len(bodies) > 1 else bodies[0]
                self._send(200, body)

            def _send(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _watch(self, path):
                scripts = replay.watches.get(path) or []
                steps = scripts.pop(0) if scripts else []
                if steps and isinstance(steps[0], tuple):
                    return self._send(steps[0][1], {"kind": "Status", "code": steps[0][1], "reason": "Expired"})
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for step in steps:
                    if step == "drop":
                        self.wfile.write(b"40\r\n{\"type\": \"MODIFIED\", \"obj")
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    if step == "end":
                        self.wfile.write(b"0\r\n\r\n")
                        return
                    line = json.dumps(step).encode() + b"\n"
                    self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                    self.wfile.flush()
                replay.stop.wait(30)
                self.close_connection = True

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        for path, kind in (("/api/v1/nodes", "NodeList"), ("/api/v1/services", "ServiceList"),
                           ("/apis/discovery.k8s.io/v1/endpointslices", "EndpointSliceList"),
                           ("/apis/security.istio.io/v1/authorizationpolicies", "AuthorizationPolicyList"),
                           ("/apis/security.istio.io/v1/peerauthentications", "PeerAuthenticationList")):
            self.lists[path] = [lst(kind, [], "1")]

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()

    def watch_versions(self, path: str) -> list[str | None]:
        return [q.get("resourceVersion") for p, q in self.seen if p == path and q.get("watch")]


@pytest.fixture
def replay():
    r = Replay()
    yield r
    r.close()


def run_discovery(replay: Replay, until, timeout: float = 8.0) -> Agent:
    cfg = Config.model_validate({"node": {"name": NODE, "address": "192.0.2.1"},
                                 "kubernetes": {"enabled": True, "api_server": replay.url, "token_path": "/nonexistent",
                                                "backoff_max_s": 0.2}})
    agent = Agent(cfg)  # the real one: registry, policies, routing view; no data plane

    async def main():
        async with trio.open_nursery() as n:
            d = await disc.start(agent, n)
            await disc.run(d, n)
            with trio.fail_after(timeout):
                while not until(agent, d):
                    await trio.sleep(0.02)
            n.cancel_scope.cancel()

    trio.run(main)
    return agent


PODS = "/api/v1/pods"


def uids(agent) -> set[str]:
    return {w.uid for w in agent.registry}


def test_list_watch_bookmark_and_resume_from_the_last_version(replay):
    replay.lists["/api/v1/nodes"] = [lst("NodeList", [node(NODE, "192.0.2.1", "10.1.0.0/24"),
                                                      node("node-b", "192.0.2.2", "10.2.0.0/24")], "5")]
    replay.lists[PODS] = [lst("PodList", [pod("a", "10.1.0.5", rv="8"), pod("b", "10.2.0.5", node="node-b", rv="9")],
                              "10")]
    replay.watches[PODS] = [
        [{"type": "ADDED", "object": pod("c", "10.1.0.7", rv="11")},
         {"type": "MODIFIED", "object": pod("a", "10.1.0.5", rv="12", labels={"app": "a", "v": "2"})},
         {"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "20"}}}, "end"],
        [{"type": "DELETED", "object": pod("b", "10.2.0.5", node="node-b", rv="21")}],
    ]
    agent = run_discovery(replay, lambda a, d: uids(a) == {"uid-a", "uid-c"})
    assert replay.watch_versions(PODS)[:2] == ["10", "20"]  # resumed after the bookmark
    a = agent.registry.get("uid-a")
    assert dict(a.labels) == {"app": "a", "v": "2"} and a.node is None and a.identity_key == ("shop", "web")
    assert [n.name for n in agent.config.cluster.nodes] == ["node-b"]
    assert agent.config.cluster.pod_cidrs == ["10.1.0.0/24"]  # this node's, from its Node object


@pytest.mark.parametrize("gone", ["event", "status"])
def test_410_gone_relists_and_drops_what_vanished(replay, gone):
    replay.lists[PODS] = [lst("PodList", [pod("a", "10.1.0.5"), pod("b", "10.1.0.6")], "10"),
                          lst("PodList", [pod("b", "10.1.0.6"), pod("d", "10.1.0.8")], "30")]
    first = ([{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}]
             if gone == "event" else [("status", 410)])
    replay.watches[PODS] = [first]
    agent = run_discovery(replay, lambda a, d: d.counts["relists_410"] >= 1 and uids(a) == {"uid-b", "uid-d"})
    assert replay.watch_versions(PODS)[:2] == ["10", "30"]  # watched again from the relist
    assert agent.registry.get("uid-a") is None  # deleted while the watch was down: gone


def test_a_dropped_watch_resumes_from_the_last_version_seen(replay):
    replay.lists[PODS] = [lst("PodList", [pod("a", "10.1.0.5")], "10")]
    replay.watches[PODS] = [
        [{"type": "ADDED", "object": pod("e", "10.1.0.9", rv="14")}, "drop"],
        [{"type": "DELETED", "object": pod("a", "10.1.0.5", rv="15")}],
    ]
    agent = run_discovery(replay, lambda a, d: uids(a) == {"uid-e"})
    assert replay.watch_versions(PODS)[:2] == ["10", "14"]
    assert agent.discovery.counts["errors"] >= 1  # the drop was seen as an error, then resumed


def test_policies_services_and_a_bad_policy_is_skipped(replay):
    good = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "deny-all", "namespace": "shop", "resourceVersion": "3"},
            "spec": {"action": "DENY", "rules": [{}]}}
    bad = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": "typo", "namespace": "shop", "resourceVersion": "4"},
           "spec": {"action": "DENY", "rulez": []}}
    replay.lists["/apis/security.istio.io/v1/authorizationpolicies"] = [lst("AuthorizationPolicyList", [good, bad], "5")]
    replay.lists["/api/v1/services"] = [lst("ServiceList", [
        {"metadata": {"name": "api", "namespace": "shop", "resourceVersion": "2"},
         "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "targetPort": 8080}]}}], "2")]
    replay.lists["/apis/discovery.k8s.io/v1/endpointslices"] = [lst("EndpointSliceList", [
        {"metadata": {"name": "api-x", "namespace": "shop", "labels": {"kubernetes.io/service-name": "api"}},
         "endpoints": [{"addresses": ["10.1.0.5"]}], "ports": [{"port": 8080}]}], "2")]
    replay.lists[PODS] = [lst("PodList", [], "1")]
    agent = run_discovery(replay, lambda a, d: d.counts["applies"] >= 1 and len(a.policies) == 1)
    assert [p["name"] for p in agent.policies.list()] == ["deny-all"]
    assert [(s.vip, s.ports, s.endpoints, s.target_port) for s in agent.config.cluster.services] == [
        ("10.96.0.10", [80], ["10.1.0.5"], 8080)]
