"""Kubernetes discovery (``kubernetes.enabled``): the agent's registry, peer nodes,
services and policies from the API server, kept current with list + watch.

A thin trio shell around ``agent.k8s.model``. The official ``kubernetes`` client makes
the calls (in-cluster token and CA, the token re-read as the kubelet rotates it); its
blocking reads run in threads that hand events to trio over memory channels. Per kind:
list, then watch from the list's ``resourceVersion`` with bookmarks; a watch that
ends or drops resumes from the last version seen; ``410 Gone`` (as an HTTP status or
as a watch ``ERROR`` event) relists, and the relist replaces the kind wholesale, so
objects deleted meanwhile go away; other errors back off (capped, jittered).
Changes are coalesced and applied to the agent: workloads registered, changed and
removed (only the ones discovery made), peers and services into the routing view,
``AuthorizationPolicy``/``PeerAuthentication`` objects as policy source ``kubernetes``
(an invalid one is skipped and logged, the others apply).
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

import trio

from agent.k8s.model import KINDS, Cache, Desired, desired

logger = logging.getLogger("hostmesh.k8s")

BACKOFF_FIRST_S = 0.5
COALESCE_S = 0.05
ISTIO_GROUP = "security.istio.io"


class Gone(Exception):
    """410: the resourceVersion is too old to watch from."""


def api_client(cfg):
    """An ``ApiClient`` for the configured (or in-cluster) API server."""
    from kubernetes import client

    c = client.Configuration()
    if cfg.api_server:
        c.host = cfg.api_server.rstrip("/")
    else:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise RuntimeError("kubernetes.enabled but neither kubernetes.api_server nor KUBERNETES_SERVICE_HOST is set")
        c.host = f"https://{host}:{port}" if ":" not in host else f"https://[{host}]:{port}"
    if c.host.startswith("https") and Path(cfg.ca_path).exists():
        c.ssl_ca_cert = cfg.ca_path

    def token(conf) -> None:
        # projected service-account tokens rotate; re-read before every request (cheap)
        try:
            conf.api_key["authorization"] = Path(cfg.token_path).read_text().strip()
        except OSError:
            conf.api_key.pop("authorization", None)

    c.api_key_prefix["authorization"] = "Bearer"
    c.refresh_api_key_hook = token
    token(c)
    return client.ApiClient(c)


class Discovery:
    def __init__(self, agent, cfg, node_name: str) -> None:
        self.agent = agent
        self.cfg = cfg
        self.node = node_name
        self.cache = Cache()
        self.owned: set[str] = set()  # workload uids discovery registered
        self.policy_docs: list | None = None
        self._changed = trio.Event()
        self.counts = {"lists": 0, "relists_410": 0, "watch_restarts": 0, "errors": 0, "events": 0,
                       "policies_rejected": 0, "applies": 0}
        self._api = None

    # ---- the API calls (blocking; threads) ------------------------------------------------
    def _call(self, kind: str, **kw):
        from kubernetes import client

        if self._api is None:
            self._api = api_client(self.cfg)
        kw.update(_preload_content=False)
        if kind in ("authorizationpolicies", "peerauthentications"):
            return client.CustomObjectsApi(self._api).list_cluster_custom_object(
                ISTIO_GROUP, self.cfg.istio_api_version, kind, **kw)
        core = client.CoreV1Api(self._api)
        fn = {"pods": core.list_pod_for_all_namespaces, "nodes": core.list_node,
              "services": core.list_service_for_all_namespaces,
              "endpointslices": client.DiscoveryV1Api(self._api).list_endpoint_slice_for_all_namespaces}[kind]
        return fn(**kw)

    def _list(self, kind: str) -> tuple[list[dict], str | None]:
        resp = self._call(kind, _request_timeout=(5, 60))
        try:
            body = json.loads(resp.data)
        finally:
            resp.release_conn()
        return body.get("items") or [], (body.get("metadata") or {}).get("resourceVersion")

    def _stream(self, kind: str, version: str | None, send) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        kw = dict(watch=True, allow_watch_bookmarks=True, timeout_seconds=self.cfg.watch_timeout_s,
                  _request_timeout=(5, self.cfg.watch_timeout_s + 30))
        if version:
            kw["resource_version"] = version
        resp = self._call(kind, **kw)
        try:
            for line in iter_resp_lines(resp):
                if line.strip():
                    trio.from_thread.run(send.send, json.loads(line))
        finally:
            resp.release_conn()

    # ---- per kind: list, watch, resume, relist ----------------------------------------------
    async def list_all(self) -> None:
        """Every kind once (start-up: before capture, so this node's pod CIDRs are known)."""
        for kind in KINDS:
            await self._relist(kind)

    async def _relist(self, kind: str) -> None:
        items, version = await trio.to_thread.run_sync(self._list, kind, abandon_on_cancel=True)
        self.cache.replace(kind, items, version)
        self.counts["lists"] += 1
        self._changed.set()

    async def reflect(self, kind: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        backoff = BACKOFF_FIRST_S
        while True:
            try:
                if self.cache.versions[kind] is None:
                    await self._relist(kind)
                await self._watch(kind)
                self.counts["watch_restarts"] += 1  # the server ended the watch: resume
                backoff = BACKOFF_FIRST_S
            except Gone:
                self.counts["relists_410"] += 1
                logger.info("watch of %s: 410 Gone; listing again", kind)
                self.cache.forget(kind)
            except Exception as e:  # noqa: BLE001 - API errors, dropped connections: retry
                status = getattr(e, "status", None)
                if status == 410:
                    self.counts["relists_410"] += 1
                    self.cache.forget(kind)
                    continue
                self.counts["errors"] += 1
                if status == 404 and kind in ("authorizationpolicies", "peerauthentications"):
                    logger.info("no %s resource (Istio CRDs not installed); checking again later", kind)
                    self.cache.replace(kind, [], None)
                    self._changed.set()
                    await trio.sleep(self.cfg.backoff_max_s)
                    continue
                logger.warning("kubernetes %s: %s; retrying in %.1f s", kind, _short(e), backoff)
                await trio.sleep(backoff * (0.5 + random.random()))
                backoff = min(self.cfg.backoff_max_s, backoff * 2)

    async def _watch(self, kind: str) -> None:
        try:
            await self._watch_once(kind)
        except BaseExceptionGroup as eg:  # the reader thread's error, or ours: raise it as is
            raise _first(eg) from None

    async def _watch_once(self, kind: str) -> None:
        send, recv = trio.open_memory_channel(256)

        async def reader() -> None:
            async with send:
                await trio.to_thread.run_sync(self._stream, kind, self.cache.versions[kind], send,
                                              abandon_on_cancel=True)

        async with trio.open_nursery() as n:
            n.start_soon(reader)
            async with recv:
                async for ev in recv:
                    etype, obj = ev.get("type"), ev.get("object") or {}
                    if etype == "ERROR":
                        if obj.get("code") == 410:
                            raise Gone()  # the nursery stops the reader (no cancel first: a
                            # checkpoint on the way out would swap Gone for Cancelled)
                        raise RuntimeError(f"watch error: {obj.get('message') or obj}")
                    self.counts["events"] += 1
                    if self.cache.event(kind, etype, obj):
                        self._changed.set()

    # ---- applying to the agent --------------------------------------------------------------
    async def apply_loop(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._changed.wait()
            await trio.sleep(COALESCE_S)
            self._changed = trio.Event()
            self.apply()

    def apply(self) -> None:
        self.apply_desired(desired(self.cache, self.node))

    def apply_desired(self, d: Desired) -> None:
        from agent.config import PeerNode, ServiceConfig
        from agent.state.workloads import WorkloadError, workload_from_json

        a = self.agent
        self.counts["applies"] += 1
        for uid in sorted(self.owned - set(d.workloads)):
            a.unregister(uid)
        owned = set()
        for uid, body in d.workloads.items():
            try:
                w = workload_from_json(body, local_node=self.node)
            except WorkloadError as e:
                logger.warning("pod %s/%s skipped: %s", body.get("namespace"), body.get("name"), e)
                continue
            owned.add(uid)
            if a.registry.get(uid) != w:
                a.register(w)
        self.owned = owned
        cluster = a.config.cluster
        nodes, services = [], []
        for e in d.nodes:
            try:
                nodes.append(PeerNode.model_validate(e))
            except ValueError as err:
                logger.warning("node %s skipped: %s", e.get("name"), err)
        for e in d.services:
            try:
                services.append(ServiceConfig.model_validate(e))
            except ValueError as err:
                logger.warning("service %s/%s skipped: %s", e.get("namespace"), e.get("name"), err)
        if d.this_node and d.this_node.get("pod_cidrs") and not cluster.pod_cidrs:
            cluster.pod_cidrs = list(d.this_node["pod_cidrs"])
        if nodes != cluster.nodes or services != cluster.services:
            cluster.nodes, cluster.services = nodes, services
            a.cluster_changed()
        self._apply_policies(d.policy_docs)

    def _apply_policies(self, docs: list[dict]) -> None:
        from agent.rbac.loader import PolicyError, load_documents

        if docs == self.policy_docs:
            return
        self.policy_docs = docs
        loaded = []
        for doc in docs:
            m = doc["metadata"]
            where = f"kubernetes:{doc['kind']}/{m.get('namespace')}/{m.get('name')}"
            try:
                loaded += load_documents(json.dumps(doc), where, self.agent.config.policies.root_namespace)
            except PolicyError as e:
                self.counts["policies_rejected"] += 1
                logger.warning("policy skipped: %s", e)
        self.agent.policies.replace_source("kubernetes", loaded)
        self.agent.recheck_connections()

    def stats(self) -> dict:
        return dict(self.counts, versions=dict(self.cache.versions), workloads=len(self.owned))


def _first(eg: BaseExceptionGroup) -> BaseException:
    for e in eg.exceptions:
        if isinstance(e, BaseExceptionGroup):
            return _first(e)
        if not isinstance(e, trio.Cancelled):
            return e
    return eg.exceptions[0]


def _short(e: BaseException) -> str:
    s = f"{type(e).__name__}: {getattr(e, 'reason', None) or e}"
    return s if len(s) < 300 else s[:300] + "..."


async def start(agent, nursery: trio.Nursery) -> Discovery:
    """Start-up half: list everything (before capture: this node's pod CIDRs). The
    caller then registers static state and calls ``run``."""
    d = Discovery(agent, agent.config.kubernetes, agent.config.node.name)
    backoff = BACKOFF_FIRST_S
    while True:
        try:
            await d.list_all()
            break
        except Exception as e:  # noqa: BLE001 - not ready until the API answered once
            logger.warning("kubernetes API not reachable yet: %s; retrying in %.1f s", _short(e), backoff)
            await trio.sleep(backoff)
            backoff = min(agent.config.kubernetes.backoff_max_s, backoff * 2)
    pods = desired(d.cache, d.node)
    if pods.this_node and pods.this_node.get("pod_cidrs") and not agent.config.cluster.pod_cidrs:
        agent.config.cluster.pod_cidrs = list(pods.this_node["pod_cidrs"])
    agent.discovery = d
    return d


async def run(d: Discovery, nursery: trio.Nursery) -> None:
    """Steady state: apply what was listed, then watch every kind."""
    d.apply()
    await nursery.start(d.apply_loop)
    for kind in KINDS:
        await nursery.start(d.reflect, kind)
