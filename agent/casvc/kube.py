"""The CA service's Kubernetes access (``kubernetes:`` in its configuration): TokenReview
for bearer-token callers and the pods of the cluster for its own view, listed then
watched (client-go's reflector: list, watch from the list's resourceVersion, relist on
410 Gone or an error, with capped backoff). Blocking HTTP in its own threads (the gRPC
handlers are threads too); decides nothing (``decide`` and ``podview`` do).
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from agent.casvc import podview

logger = logging.getLogger("hostmesh.casvc.kube")
# A TokenReview slower than this fails the call (UNAVAILABLE); the node agent retries.
REVIEW_TIMEOUT_S = 5.0
BACKOFF_FIRST_S, BACKOFF_CAP_S = 0.5, 30.0


class KubeError(RuntimeError):
    pass


class KubeSource:
    def __init__(self, k, trust_domain: str) -> None:
        self.k = k
        self.td = trust_domain
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        self.api = (k.api_server or (f"https://{host}:{port}" if host else "")).rstrip("/")
        if not self.api:
            raise KubeError("kubernetes.api_server is not set and KUBERNETES_SERVICE_HOST is not in the environment")
        self._ctx = ssl.create_default_context(cafile=k.ca_path if Path(k.ca_path).exists() else None) \
            if self.api.startswith("https") else None
        self._pods: dict[str, podview.Pod] = {}
        self._view: tuple[dict, dict] = ({}, {})
        self._lock = threading.Lock()
        self.synced = threading.Event()
        self._stop = threading.Event()
        self.counters: dict[str, int] = {}

    # ---- HTTP -----------------------------------------------------------------------
    def _open(self, method: str, path: str, body: dict | None, timeout: float):
        headers = {"Accept": "application/json"}
        try:
            headers["Authorization"] = "Bearer " + Path(self.k.token_path).read_text().strip()
        except OSError:
            pass  # e.g. a test API without authentication
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        req = urllib.request.Request(self.api + path, data=data, method=method, headers=headers)
        return urllib.request.urlopen(req, timeout=timeout, context=self._ctx)

    def review(self, token: str) -> dict:
        """The TokenReview's ``status`` for ``token`` with our audience; KubeError if the
        API cannot be asked."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": [self.k.audience]}}
        try:
            with self._open("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body, REVIEW_TIMEOUT_S) as r:
                status = json.loads(r.read()).get("status") or {}
        except (OSError, ValueError) as e:
            raise KubeError(f"TokenReview failed: {e}") from None
        if status.get("authenticated") and self.k.audience not in (status.get("audiences") or [self.k.audience]):
            return {"authenticated": False, "error": f"token audience is not {self.k.audience}"}
        return status

    # ---- the pods -------------------------------------------------------------------
    def current(self) -> tuple[dict[str, frozenset[str]], dict[tuple[str, str], str]]:
        with self._lock:
            return self._view

    def _publish(self) -> None:
        v = podview.view(self._pods, self.td)
        with self._lock:
            self._view = v

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True, name="ca-kube-pods").start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                rv = self._list()
                failures = 0
                self._watch(rv)
            except (OSError, ValueError, KubeError) as e:
                failures += 1
                self.counters["api_errors"] = self.counters.get("api_errors", 0) + 1
                delay = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** min(failures, 10))
                logger.warning("pods from the API: %s; again in %.1f s", e, delay)
                self._stop.wait(delay)

    def _list(self) -> str:
        with self._open("GET", "/api/v1/pods", None, 60) as r:
            doc = json.loads(r.read())
        pods = {}
        for obj in doc.get("items") or []:
            p = podview.pod_of(obj)
            if p is not None:
                pods[obj["metadata"]["uid"]] = p
        self._pods = pods
        self._publish()
        self.synced.set()
        return (doc.get("metadata") or {}).get("resourceVersion", "")

    def _watch(self, rv: str) -> None:
        t = self.k.watch_timeout_s
        with self._open("GET", f"/api/v1/pods?watch=1&resourceVersion={rv}&timeoutSeconds={t}", None, t + 30) as r:
            for line in r:
                if self._stop.is_set():
                    return
                ev = json.loads(line)
                if ev.get("type") == "ERROR":  # 410 Gone: relist
                    raise KubeError(f"watch: {(ev.get('object') or {}).get('message', 'error')}")
                podview.apply_event(self._pods, ev)
                self._publish()
        time.sleep(0)  # the server ended the watch (timeoutSeconds): relist and watch again
