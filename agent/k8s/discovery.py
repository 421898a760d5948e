"""Kubernetes discovery (``kubernetes.enabled``): the agent's registry, peer nodes,
services and policies from the API server, kept current with list + watch.

A thin trio shell around ``agent.k8s.index`` (what each event changes),
``agent.k8s.apply`` (carrying the changes into the agent) and ``agent.k8s.applying``
(when: right where a watch read's events were taken in, or coalesced by the apply
loop). The official ``kubernetes`` client makes the list calls (in-cluster token and CA,
the token re-read as the kubelet rotates it); its blocking reads run in threads, which
also parse and slim every object (``agent.k8s.model.slim``: only the fields hostmesh
uses are kept) before handing them to trio in batches. Per kind: a paginated list
(``limit``/``continue``) streamed page by page into the state (``410 Gone`` relists the
same way: objects not seen again go away, and the old and new lists are never both
held), then a watch from the list's ``resourceVersion`` with bookmarks, read on the
event loop (``agent.k8s.watch``: h11 with the client's configuration; one wake-up per
read instead of a thread's and the loop's); a watch that ends or drops resumes from the
last version seen; other errors back off (capped, jittered).

Each event costs what it changes: an object whose slim equals the stored one stops
there; a pod event plans its own uid (and the pods it shares an address with), a slice
event its service's routing-view entries, a policy event that policy. Changes are
applied in batches with checkpoints between them, so no discovery step holds the event
loop for long (10 ms at most by design). After the first list the collector freezes
what was loaded (it is never scanned again). Workloads are registered, changed and
removed through ``Agent.register``/``unregister`` (the admin API's path; only the ones
discovery made are removed), peers and services go into the routing view next to the
config's static ones, ``AuthorizationPolicy`` / ``PeerAuthentication`` objects become
policy source ``kubernetes`` (an invalid one is skipped and logged, the others apply).
Counters: ``k8s_*`` in ``/v1/stats``.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import time
from pathlib import Path

import trio

from agent.k8s.apply import Applier
from agent.k8s.applying import COALESCE_S, YIELD_AFTER_S, Applying
from agent.k8s.decode import decode_event, decode_list
from agent.k8s.index import Index
from agent.k8s.model import KINDS, POLICY_KINDS, TRAFFIC_KINDS, key_of, slim
from agent.k8s.reconcile import Backoff
from agent.k8s.watch import open_watch, watch_path

logger = logging.getLogger("hostmesh.k8s")

LIST_PAGE = 100  # objects per list request (limit/continue): a page of 7 KB pods parses to ~7 MB
PUT_BATCH = 200  # listed objects put into the state per hand-over to the event loop
# A watch that ends this soon without an event is treated as a failure (backed off):
# a proxy or server that closes every watch at once must not be polled in a tight loop.
QUICK_END_S = 1.0
CONNECT_TIMEOUT_S = 5  # a watch's connect, TLS handshake and answer head (the lists' connect timeout)
# A watch still open this long after its timeoutSeconds is dead (the server ends it at
# timeoutSeconds): cut and resumed, as the client's read timeout did before.
WATCH_GRACE_S = 30
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


class Discovery(Applying):
    def __init__(self, agent, cfg, node_name: str) -> None:
        self.agent = agent
        self.cfg = cfg
        self.node = node_name
        self.index = Index(node_name)
        self.cache = self.index  # the name the stats and older callers use
        self.counts = {"lists": 0, "relists_410": 0, "watch_restarts": 0, "errors": 0, "events": 0,
                       "policies_rejected": 0, "policies_fail_closed": 0, "pods_skipped": 0, "applies": 0}
        self.applier = Applier(agent, node_name, self.count)
        self._changed = trio.Event()
        self._flushing = False  # a flush is under way (it may be waiting at a checkpoint)
        self._last_apply = -COALESCE_S  # time.perf_counter() (one C call; trio.current_time() is three frames)
        self._api = None

    @property
    def owned(self) -> set[str]:
        return self.applier.owned

    @property
    def versions(self) -> dict[str, str | None]:
        return self.index.versions

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

    def _list(self, kind: str) -> str | None:
        """One paginated list, each page parsed and slimmed here and streamed into the
        state; the list's resourceVersion."""
        token = None
        while True:
            kw: dict = {"limit": LIST_PAGE, "_request_timeout": (5, 60)}
            if token:
                kw["_continue"] = token
            resp = self._call(kind, **kw)
            try:
                data = resp.data
            finally:
                resp.release_conn()
            items: list = []
            # item by item: only the slims outlive their object
            rest = decode_list(kind, data, lambda o, out=items: out.append((key_of(o), slim(kind, o, self.node))))
            del data
            meta = rest.get("metadata") or {}
            for i in range(0, len(items), PUT_BATCH):
                trio.from_thread.run_sync(self._put, kind, items[i:i + PUT_BATCH])
            token = meta.get("continue")
            if not token:
                return meta.get("resourceVersion")

    def _put(self, kind: str, items: list) -> None:
        if any([self.index.put(kind, key, value) for key, value in items]):
            self._changed.set()

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
                self.index.replace(kind, [], None)

    async def _relist(self, kind: str) -> None:
        self.index.begin_relist(kind)
        version = await trio.to_thread.run_sync(self._list, kind, abandon_on_cancel=True)
        self.index.end_relist(kind, version)
        self.count("lists")
        self._changed.set()
        if self.counts["applies"]:
            gc.freeze()  # what the relist loaded is long-lived: never scanned again

    async def reflect(self, kind: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        backoff = Backoff(self.cfg.backoff_initial_s, self.cfg.backoff_max_s)
        while True:
            try:
                if self.index.versions[kind] is None:
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
                self.index.forget(kind)
            except Exception as e:  # noqa: BLE001 - API errors, dropped connections: retry
                status = getattr(e, "status", None)
                if status == 410:  # as an HTTP status (a list or watch from a compacted version)
                    self.count("relists_410")
                    logger.info("%s: 410 Gone; listing again", kind)
                    self.index.forget(kind)
                    continue
                self.count("errors")
                if status == 404 and kind in POLICY_KINDS:
                    logger.info("no %s resource (Istio CRDs not installed); checking again later", kind)
                    self.index.replace(kind, [], None)
                    self._changed.set()
                    await trio.sleep(self.cfg.backoff_max_s)
                    continue
                delay = backoff.next(random.random())
                logger.warning("kubernetes %s: %s; retrying in %.1f s", kind, _short(e), delay)
                await trio.sleep(delay)

    async def _watch(self, kind: str) -> int:
        """One watch from the kind's last version, read on the event loop
        (``agent.k8s.watch``); the number of events it carried. Each read's events are
        decoded, slimmed and put into the index here, letting the loop run whenever
        that has held it ``YIELD_AFTER_S`` (a burst), then applied (``_delivered``)."""
        if self._api is None:
            self._api = api_client(self.cfg)
        params = {"watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": str(self.cfg.watch_timeout_s)}
        version = self.index.versions[kind]
        if version:
            params["resourceVersion"] = version
        group = ("networking.istio.io" if kind in TRAFFIC_KINDS else ISTIO_GROUP) if kind in POLICY_KINDS else None
        target = watch_path(kind, group, self.cfg.istio_api_version, params)
        w = await open_watch(self._api.configuration, target, CONNECT_TIMEOUT_S)
        seen = 0
        try:
            with trio.fail_after(self.cfg.watch_timeout_s + WATCH_GRACE_S):
                while (lines := await w.next_lines()) is not None:
                    seen += await self._take_in(kind, lines)
        finally:
            await w.aclose()
        return seen

    async def _take_in(self, kind: str, lines: list[bytes]) -> int:
        """One read's events into the index, then applied (``_delivered``); the loop
        runs whenever this has held it ``YIELD_AFTER_S`` (a burst). Raises ``Gone`` or
        RuntimeError at an ``ERROR`` event, after applying what came before it."""
        changed, last = False, time.perf_counter()
        for n, line in enumerate(lines, 1):
            etype, obj = decode_event(kind, line)
            if etype == "ERROR":
                if changed:
                    self._delivered()
                if obj.get("code") == 410:
                    raise Gone()
                raise RuntimeError(f"watch error: {obj.get('message') or obj}")
            value = slim(kind, obj, self.node) if etype in ("ADDED", "MODIFIED") else None
            changed |= self.index.apply_event(kind, etype, key_of(obj), value,
                                              (obj.get("metadata") or {}).get("resourceVersion"))
            self.counts["events"] += 1  # not an agent counter: one per event is noise
            if time.perf_counter() - last >= YIELD_AFTER_S and n < len(lines):
                if changed:
                    self._delivered()
                changed = False
                await trio.sleep(0)
                last = time.perf_counter()
        if changed:
            self._delivered()
        return len(lines)

    def stats(self) -> dict:
        return dict(self.counts, versions=dict(self.index.versions), workloads=len(self.owned))


def _short(e: BaseException) -> str:
    s = f"{type(e).__name__}: {getattr(e, 'reason', None) or e}"
    return s if len(s) < 300 else s[:300] + "..."


async def start(agent, nursery: trio.Nursery) -> Discovery:
    """Start-up half: list everything (before capture: this node's pod CIDRs). The
    caller then registers static state and calls ``run``."""
    cfg = agent.config.kubernetes
    d = Discovery(agent, cfg, cfg.node_name or agent.config.node.name)
    backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s)
    gc.disable()  # the first list allocates much that lives on: no collections meanwhile
    try:
        while True:
            try:
                await d.list_all()
                break
            except Exception as e:  # noqa: BLE001 - not ready until the API answered once
                d.count("errors")
                delay = backoff.next(random.random())
                logger.warning("kubernetes API not reachable yet: %s; retrying in %.1f s", _short(e), delay)
                await trio.sleep(delay)
    except BaseException:
        gc.enable()
        raise
    me = d.index.nodes()[1]
    if me and me.get("pod_cidrs") and not agent.config.cluster.pod_cidrs:
        agent.config.cluster.pod_cidrs = list(me["pod_cidrs"])
    agent.discovery = d
    return d


async def run(d: Discovery, nursery: trio.Nursery) -> None:
    """Steady state: apply what was listed, then watch every kind."""
    try:
        await d.flush(remerge=True)
    finally:
        gc.freeze()  # what the first list loaded is long-lived: the collector skips it from now on
        gc.enable()
    await nursery.start(d.apply_loop)
    for kind in KINDS:
        await nursery.start(d.reflect, kind)
