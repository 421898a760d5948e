"""Kubernetes discovery (``kubernetes.enabled``): the agent's registry, peer nodes,
services and policies from the API server, kept current with list + watch.

A thin trio shell around ``agent.k8s.model``. The official ``kubernetes`` client makes
the calls (in-cluster token and CA, the token re-read as the kubelet rotates it); its
blocking reads run in threads that hand events to trio over memory channels. Per kind:
list, then watch from the list's ``resourceVersion`` with bookmarks; a watch that
ends or drops resumes from the last version seen; ``410 Gone`` (as an HTTP status or
as a watch ``ERROR`` event) relists, and the relist replaces the kind wholesale, so
objects deleted meanwhile go away; other errors back off (capped, jittered).
Changes are coalesced and applied to the agent as ``agent.k8s.reconcile`` plans them:
workloads registered, changed and removed through ``Agent.register``/``unregister`` (the
admin API's path; only the ones discovery made are removed), peers and services into the
routing view next to the config's static ones, ``AuthorizationPolicy`` /
``PeerAuthentication`` objects as policy source ``kubernetes`` (an invalid one is
skipped and logged, the others apply). Counters: ``k8s_*`` in ``/v1/stats``.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

import trio

from agent.k8s.model import KINDS, POLICY_KINDS, TRAFFIC_KINDS, Cache, Desired, desired
from agent.k8s.reconcile import Backoff, merge_nodes, merge_services, plan_workloads

logger = logging.getLogger("hostmesh.k8s")

# Changes within this window are applied together (a relist, a burst of pod events).
COALESCE_S = 0.05
# A watch that ends this soon without an event is treated as a failure (backed off):
# a proxy or server that closes every watch at once must not be polled in a tight loop.
QUICK_END_S = 1.0
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
        # the config's own peers and services: kept next to the discovered ones
        cluster = agent.config.cluster
        self.static = (list(cluster.nodes), list(cluster.services))
        self._conflicts: set[str] = set()  # what was logged already
        self._skipped: set[str] = set()
        self._changed = trio.Event()
        self._policies_changed = trio.Event()  # policy_loop parses them beside the trio thread
        self.counts = {"lists": 0, "relists_410": 0, "watch_restarts": 0, "errors": 0, "events": 0,
                       "policies_rejected": 0, "pods_skipped": 0, "applies": 0}
        self._api = None

    def count(self, name: str) -> None:
        self.counts[name] += 1
        self.agent.count(f"k8s_{name}")

    # ---- the API calls (blocking; threads) ------------------------------------------------
    def _call(self, kind: str, **kw):
        from kubernetes import client

        if self._api is None:
            self._api = api_client(self.cfg)
        kw.update(_preload_content=False)
        if kind in POLICY_KINDS:
            return client.CustomObjectsApi(self._api).list_cluster_custom_object(
                "networking.istio.io" if kind in TRAFFIC_KINDS else ISTIO_GROUP, self.cfg.istio_api_version, kind, **kw)
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
        """Every kind once (start-up: before capture, so this node's pod CIDRs are known).
        Without the Istio CRDs the policy kinds are empty (their watch checks again)."""
        for kind in KINDS:
            try:
                await self._relist(kind)
            except Exception as e:
                if getattr(e, "status", None) != 404 or kind not in POLICY_KINDS:
                    raise
                logger.info("no %s resource (Istio CRDs not installed); checking again later", kind)
                self.cache.replace(kind, [], None)

    async def _relist(self, kind: str) -> None:
        items, version = await trio.to_thread.run_sync(self._list, kind, abandon_on_cancel=True)
        self.cache.replace(kind, items, version)
        self.count("lists")
        self._changed.set()

    async def reflect(self, kind: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        backoff = Backoff(self.cfg.backoff_initial_s, self.cfg.backoff_max_s)
        while True:
            try:
                if self.cache.versions[kind] is None:
                    await self._relist(kind)
                began = trio.current_time()
                events = await self._watch(kind)
                self.count("watch_restarts")  # the server ended the watch: resume
                if events or trio.current_time() - began >= QUICK_END_S:
                    backoff.reset()
                else:
                    await trio.sleep(backoff.next(random.random()))
            except Gone:
                self.count("relists_410")
                logger.info("watch of %s: 410 Gone; listing again", kind)
                self.cache.forget(kind)
            except Exception as e:  # noqa: BLE001 - API errors, dropped connections: retry
                status = getattr(e, "status", None)
                if status == 410:  # as an HTTP status (a list or watch from a compacted version)
                    self.count("relists_410")
                    logger.info("%s: 410 Gone; listing again", kind)
                    self.cache.forget(kind)
                    continue
                self.count("errors")
                if status == 404 and kind in POLICY_KINDS:
                    logger.info("no %s resource (Istio CRDs not installed); checking again later", kind)
                    self.cache.replace(kind, [], None)
                    self._changed.set()
                    await trio.sleep(self.cfg.backoff_max_s)
                    continue
                delay = backoff.next(random.random())
                logger.warning("kubernetes %s: %s; retrying in %.1f s", kind, _short(e), delay)
                await trio.sleep(delay)

    async def _watch(self, kind: str) -> int:
        """One watch from the kind's last version; the number of events it carried."""
        try:
            return await self._watch_once(kind)
        except BaseExceptionGroup as eg:  # the reader thread's error, or ours: raise it as is
            raise _first(eg) from None

    async def _watch_once(self, kind: str) -> int:
        send, recv = trio.open_memory_channel(256)

        async def reader() -> None:
            async with send:
                await trio.to_thread.run_sync(self._stream, kind, self.cache.versions[kind], send,
                                              abandon_on_cancel=True)

        events = 0
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
                    events += 1
                    self.counts["events"] += 1  # not an agent counter: one per event is noise
                    if self.cache.event(kind, etype, obj):
                        self._changed.set()
        return events

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

        a = self.agent
        self.counts["applies"] += 1
        for c in sorted(set(d.conflicts) - self._conflicts):
            logger.warning("%s; the newer pod keeps it", c)
        self._conflicts = set(d.conflicts)
        plan = plan_workloads(d.workloads, self.owned, a.registry, self.node)
        for uid in plan.unregister:
            a.unregister(uid)
        for w in plan.register:
            try:
                a.register(w)
            except Exception as e:  # noqa: BLE001 - one pod (e.g. its capture) must not stop the rest
                if a.registry.get(w.uid) is None:
                    plan.owned.discard(w.uid)
                plan.skipped.append(f"{w.namespace}/{w.name}: {_short(e)}")
        for s in sorted(set(plan.skipped) - self._skipped):  # each once, not on every apply
            self.count("pods_skipped")
            logger.warning("pod %s: skipped", s)
        self._skipped = set(plan.skipped)
        self.owned = plan.owned
        cluster = a.config.cluster
        nodes, services = [], []
        for entry in d.nodes:
            try:
                nodes.append(PeerNode.model_validate(entry))
            except ValueError as err:
                logger.warning("node %s skipped: %s", entry.get("name"), err)
        for entry in d.services:
            try:
                services.append(ServiceConfig.model_validate(entry))
            except ValueError as err:
                logger.warning("service %s/%s skipped: %s", entry.get("namespace"), entry.get("name"), err)
        if d.this_node and d.this_node.get("labels"):
            a.config.node.labels = dict(d.this_node["labels"])  # locality (docs/traffic.md)
        if d.this_node and d.this_node.get("pod_cidrs") and not cluster.pod_cidrs:
            cluster.pod_cidrs = list(d.this_node["pod_cidrs"])
        nodes, services = merge_nodes(self.static[0], nodes), merge_services(self.static[1], services)
        if nodes != cluster.nodes or services != cluster.services:
            cluster.nodes, cluster.services = nodes, services
            a.cluster_changed()
        self._apply_policies(d.policy_docs)

    def set_static(self, nodes: list, services: list) -> None:
        """The config's peers and services changed (reload): merge them in again."""
        self.static = (list(nodes), list(services))
        self.apply()

    def _apply_policies(self, docs: list[dict]) -> None:
        if docs == self.policy_docs:
            return
        self.policy_docs = docs
        self._policies_changed.set()

    async def policy_loop(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The newest policy objects, parsed and compiled in a thread and swapped in
        atomically (agent.policy_sources); a bad object is skipped and counted."""
        task_status.started()
        while True:
            await self._policies_changed.wait()
            self._policies_changed = trio.Event()
            skipped = await self.agent.policy_sources.replace_raw("kubernetes", list(self.policy_docs or ()), _where)
            traffic, bad = await trio.to_thread.run_sync(
                _traffic_of, list(self.policy_docs or ()), self.agent.config.policies.cluster_domain)
            self.agent.traffic.replace_source("kubernetes", traffic)
            for _ in range(skipped + bad):
                self.count("policies_rejected")
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


def _traffic_of(docs: list[dict], domain: str) -> tuple[list, int]:
    """The DestinationRules/VirtualServices among the policy objects (run in a thread):
    (loaded, how many were skipped as invalid)."""
    from agent.traffic.loader import load_traffic

    out, skipped = [], 0
    for doc in docs:
        try:
            out += load_traffic(json.dumps(doc), _where(doc), domain)
        except ValueError as e:  # TrafficError, or the bounded reader's refusal
            skipped += 1
            logger.warning("traffic rule skipped: %s", e)
    return out, skipped


def _where(doc: dict) -> str:
    m = doc.get("metadata") or {}
    return f"kubernetes:{doc.get('kind')}/{m.get('namespace')}/{m.get('name')}"


async def start(agent, nursery: trio.Nursery) -> Discovery:
    """Start-up half: list everything (before capture: this node's pod CIDRs). The
    caller then registers static state and calls ``run``."""
    cfg = agent.config.kubernetes
    d = Discovery(agent, cfg, cfg.node_name or agent.config.node.name)
    backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s)
    while True:
        try:
            await d.list_all()
            break
        except Exception as e:  # noqa: BLE001 - not ready until the API answered once
            d.count("errors")
            delay = backoff.next(random.random())
            logger.warning("kubernetes API not reachable yet: %s; retrying in %.1f s", _short(e), delay)
            await trio.sleep(delay)
    pods = desired(d.cache, d.node)
    if pods.this_node and pods.this_node.get("pod_cidrs") and not agent.config.cluster.pod_cidrs:
        agent.config.cluster.pod_cidrs = list(pods.this_node["pod_cidrs"])
    agent.discovery = d
    return d


async def run(d: Discovery, nursery: trio.Nursery) -> None:
    """Steady state: apply what was listed, then watch every kind."""
    await nursery.start(d.policy_loop)
    d.apply()
    await nursery.start(d.apply_loop)
    for kind in KINDS:
        await nursery.start(d.reflect, kind)
