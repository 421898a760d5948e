"""A fake Kubernetes API server for discovery's tests and the ``discovery`` benchmark.

It answers list and watch requests the way the API server does (JSON lists with a
``resourceVersion``, ``limit``/``continue`` pagination, chunked watch streams of one
event per line, ``410`` as a status or an ``ERROR`` event), from scripts or from
pre-serialised objects, so no cluster runs here. It decides nothing about discovery
and must never be used by the agent itself: it is test and benchmark equipment.

``lists[path]``: list bodies served in turn (the last one repeats; ``("status", code)``
answers that status instead; a ``bytes`` item list is pre-serialised objects);
``watches[path]``: per watch request, a list of steps — a dict (an event line),
``("status", code)`` (answer with that HTTP status), ``"drop"`` (cut the connection
mid-line), ``"end"`` (close the stream); after the scripts a watch follows the path's
live feed (``publish``) until shutdown.
"""

from __future__ import annotations

import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

KIND_PATHS = {
    "pods": ("/api/v1/pods", "PodList"),
    "nodes": ("/api/v1/nodes", "NodeList"),
    "services": ("/api/v1/services", "ServiceList"),
    "endpointslices": ("/apis/discovery.k8s.io/v1/endpointslices", "EndpointSliceList"),
    "authorizationpolicies": ("/apis/security.istio.io/v1/authorizationpolicies", "AuthorizationPolicyList"),
    "peerauthentications": ("/apis/security.istio.io/v1/peerauthentications", "PeerAuthenticationList"),
    "destinationrules": ("/apis/networking.istio.io/v1/destinationrules", "DestinationRuleList"),
    "virtualservices": ("/apis/networking.istio.io/v1/virtualservices", "VirtualServiceList"),
}
_CLOSE = object()


def lst(kind, items, rv):
    return {"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": rv}, "items": items}


class Serialised:
    """A list body of pre-serialised items (bytes each): pages are joined on demand."""

    def __init__(self, kind: str, items: list[bytes], rv: str) -> None:
        self.kind, self.items, self.rv = kind, items, rv

    def page(self, start: int, limit: int | None) -> bytes:
        end = len(self.items) if not limit else min(len(self.items), start + limit)
        meta = {"resourceVersion": self.rv}
        if end < len(self.items):
            meta["continue"] = str(end)
        head = json.dumps({"apiVersion": "v1", "kind": self.kind, "metadata": meta})[:-1].encode()
        return head + b', "items": [' + b",".join(self.items[start:end]) + b"]}"


class FakeApi:
    def __init__(self) -> None:
        self.lists: dict[str, list] = {}
        self.watches: dict[str, list[list]] = {}
        self.seen: list[tuple[str, dict]] = []
        self.stop = threading.Event()
        self._subs: dict[str, list[queue.SimpleQueue]] = {}
        self._lock = threading.Lock()
        self.extra = None  # (method, path, query, body) -> (status, obj) | None: control routes
        api = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                u = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(u.query).items()}
                if api.extra is not None:
                    answer = api.extra("GET", u.path, q)
                    if answer is not None:
                        return self._send(*answer)
                api.seen.append((u.path, q))
                if q.get("watch") in ("true", "1", "True"):
                    return self._watch(u.path)
                bodies = api.lists.get(u.path)
                if not bodies:
                    return self._send(404, {"kind": "Status", "code": 404, "message": "not found"})
                body = bodies.pop(0) if len(bodies) > 1 else bodies[0]
                if isinstance(body, tuple):
                    return self._send(body[1], {"kind": "Status", "code": body[1], "message": "scripted"})
                if isinstance(body, Serialised):
                    limit = int(q["limit"]) if q.get("limit", "").isdigit() else None
                    return self._send_bytes(200, body.page(int(q.get("continue") or 0), limit))
                limit = int(q["limit"]) if q.get("limit", "").isdigit() else 0
                start = int(q.get("continue") or 0)
                if limit and "items" in body:
                    page = dict(body, items=body["items"][start:start + limit])
                    if start + limit < len(body["items"]):
                        page["metadata"] = dict(body.get("metadata") or {}, **{"continue": str(start + limit)})
                    body = page
                self._send(200, body)

            def do_POST(self):  # noqa: N802
                u = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(u.query).items()}
                answer = api.extra("POST", u.path, q) if api.extra is not None else None
                self._send(*(answer or (404, {"message": "no such control route"})))

            def _send(self, status, obj):
                self._send_bytes(status, json.dumps(obj).encode())

            def _send_bytes(self, status, data: bytes):
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _line(self, data: bytes) -> None:
                line = data + b"\n"
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()

            def _watch(self, path):
                scripts = api.watches.get(path) or []
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
                    self._line(json.dumps(step).encode())
                feed = api._subscribe(path)
                try:
                    while not api.stop.is_set():
                        try:
                            item = feed.get(timeout=0.5)
                        except queue.Empty:
                            continue
                        if item is _CLOSE:
                            self.wfile.write(b"0\r\n\r\n")
                            self.wfile.flush()
                            return
                        self._line(item)
                except OSError:
                    pass
                finally:
                    api._unsubscribe(path, feed)
                self.close_connection = True

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        for kind, (path, list_kind) in KIND_PATHS.items():
            if kind != "pods":
                self.lists[path] = [lst(list_kind, [], "1")]

    # ---- live watch feeds ---------------------------------------------------------------
    def _subscribe(self, path: str) -> queue.SimpleQueue:
        q: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            self._subs.setdefault(path, []).append(q)
        return q

    def _unsubscribe(self, path: str, q) -> None:
        with self._lock:
            if q in self._subs.get(path, []):
                self._subs[path].remove(q)

    def watchers(self, path: str) -> int:
        with self._lock:
            return len(self._subs.get(path, []))

    def publish(self, path: str, line: bytes) -> None:
        """One event line (serialised JSON) to every open watch of ``path``."""
        with self._lock:
            subs = list(self._subs.get(path, []))
        for q in subs:
            q.put(line)

    def close_watches(self, path: str) -> None:
        with self._lock:
            subs = list(self._subs.get(path, []))
        for q in subs:
            q.put(_CLOSE)

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()

    def watch_versions(self, path: str) -> list[str | None]:
        return [q.get("resourceVersion") for p, q in self.seen if p == path and q.get("watch")]
