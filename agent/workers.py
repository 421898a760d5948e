"""Several data-plane processes on one node (``dataplane.workers`` > 1).

The **supervisor** is the agent operators talk to: it installs capture, owns the admin
socket, :15020 and :15021, the registry and the policies (fed by the admin API, the
config, Kubernetes discovery) and runs no listener itself. Each **worker** is a whole
data plane — the three listeners, shared with SO_REUSEPORT so the kernel spreads new
connections over the workers (TPROXY's socket lookup included), its own socket layer,
identities minted from the same node CA, policies and telemetry — started as
``hostmesh run --worker N`` with a derived config (its own admin socket, no capture,
no :15020/:15021).

The supervisor pushes its state (workloads and policy sources,
``PUT /v1/internal/state``) to every worker: the whole state when a worker (re)starts,
then deltas (the workloads changed since the state it holds; policies and peers only
when they changed): a worker that dies is restarted with backoff and catches up, while the
others' connections, which are theirs alone, carry on. Reads (connections, stats,
metrics) are gathered from the workers; reload and log level are passed on to them.
SIGTERM drains every worker (each has ``drain.deadline_s``) and then the supervisor.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import yaml

from agent.admin.client import AdminClient, AdminUnavailable
from agent.app import Agent
from agent.errors import ApiError
from agent.telemetry.metrics import Metrics

logger = logging.getLogger("hostmesh.workers")

RESTART_FIRST_S = 0.5
RESTART_CAP_S = 10.0
# A worker that ran this long before dying starts again from the first backoff step.
RESTART_RESET_S = 60.0
READY_TIMEOUT_S = 30.0
METRICS_POLL_S = 1.0
PR_SET_PDEATHSIG = 1


def worker_count(configured: int) -> int:
    """``0`` means one per core."""
    return configured if configured > 0 else (os.cpu_count() or 1)


def worker_config(config, index: int, state_dir: Path) -> dict:
    """The config a worker runs with: the supervisor's, with its own admin socket and
    no static workloads (the supervisor pushes the registry)."""
    d = config.model_dump(mode="json")
    d["admin"]["socket"] = str(state_dir / f"worker-{index}.sock")
    d["admin"]["group"] = None
    d["dataplane"]["workers"] = 1
    d["workloads"] = []
    d["kubernetes"]["enabled"] = False  # the supervisor watches the API and pushes the result
    d["state_dir"] = str(state_dir / f"worker-{index}")
    return d

LOG_SLACK = 1024  # uids the supervisor's change log keeps beyond twice the registry


@dataclass
class Worker:
    index: int
    socket: str
    config_path: str
    process: Any = None
    ready: bool = False
    synced: tuple | None = None  # the supervisor state it holds
    restarts: int = 0
    last_exit: int | None = None
    started_at: float = 0.0
    snapshot: dict = field(default_factory=dict)

    def client(self, timeout: float = 10.0) -> AdminClient:
        return AdminClient(self.socket, timeout=timeout)

    def to_json(self) -> dict:
        return {"index": self.index, "pid": self.process.pid if self.process else None, "ready": self.ready,
                "restarts": self.restarts, "last_exit": self.last_exit,
                "connections": self.snapshot.get("connections")}


def _pdeathsig() -> None:
    # a worker never outlives its supervisor (which owns the capture rules)
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Supervisor(Agent):
    """The ``Agent`` API over N worker processes (the admin server, readiness and metrics
    call it like any agent)."""

    def __init__(self, config, config_path: str | None = None) -> None:
        super().__init__(config, config_path)
        self.state_dir = Path(config.state_dir) / "workers"
        n = worker_count(config.dataplane.workers)
        self.workers = [Worker(i, str(self.state_dir / f"worker-{i}.sock"), str(self.state_dir / f"worker-{i}.yaml"))
                        for i in range(n)]
        self._version = 0
        self._log: dict[str, int] = {}  # uid -> version of its last change, oldest first
        self._log_floor = 0  # versions before this are forgotten: a worker that old gets the whole state
        self._cluster_at = 0
        self._changed = trio.Event()
        self._supervisor_ready = False
        self.merged = Metrics(config.telemetry.max_series)

    # ---- readiness: the supervisor's own and every worker's --------------------------
    @property
    def ready(self) -> bool:
        return self._supervisor_ready and all(w.ready and w.synced == self._state_key() for w in self.workers)

    @ready.setter
    def ready(self, value: bool) -> None:
        self._supervisor_ready = value

    def _state_key(self) -> tuple:
        return (self._version, self.policies.generation, self.traffic.generation)

    def _mark(self, uid: str | None = None, cluster: bool = False) -> None:
        self._version += 1
        if uid is not None:  # the log stays ordered by version: a uid moves to the end
            self._log.pop(uid, None)
            self._log[uid] = self._version
            if len(self._log) > 2 * len(self.registry) + LOG_SLACK:  # uids long gone: forget the oldest half
                for old in list(self._log)[: len(self._log) // 2]:
                    self._log_floor = self._log.pop(old)
        if cluster:
            self._cluster_at = self._version
        self._changed.set()

    # ---- state changes go to every worker ----------------------------------------------
    def register(self, w) -> None:
        super().register(w)
        self._mark(w.uid)

    def unregister(self, uid: str):
        w = super().unregister(uid)
        self._mark(uid)
        return w

    def cluster_changed(self, services: dict | None = None) -> None:
        super().cluster_changed(services)
        self._mark(cluster=True)

    def state(self) -> dict:
        from agent.rbac.loader import to_document

        return {"workloads": [w.to_json() for w in self.registry],
                "policies": {src: [to_document(d) for d in docs] for src, docs in self.policies.sources().items()},
                "traffic": self.traffic.sources(),
                "cluster": self.config.cluster.model_dump(mode="json")}

    def state_since(self, synced: tuple | None) -> dict:
        """What a worker holding state ``synced`` lacks: the whole state for a fresh one
        (or one older than the log), else a delta — the workloads changed since (their
        bodies, or their uids when gone), and policies, traffic rules or cluster only if
        they changed."""
        if synced is None or synced[0] < self._log_floor:
            return self.state()
        from agent.rbac.loader import to_document

        since, generation, traffic_generation = synced
        changed = []
        for uid in reversed(self._log):
            if self._log[uid] <= since:
                break
            changed.append(uid)
        present = [w for uid in changed if (w := self.registry.get(uid)) is not None]
        body: dict = {"delta": True, "workloads": [w.to_json() for w in present],
                      "removed": [uid for uid in changed if self.registry.get(uid) is None]}
        if generation != self.policies.generation:
            body["policies"] = {src: [to_document(d) for d in docs] for src, docs in self.policies.sources().items()}
        if traffic_generation != self.traffic.generation:
            body["traffic"] = self.traffic.sources()
        if self._cluster_at > since:
            body["cluster"] = self.config.cluster.model_dump(mode="json")
        return body

    async def sync_loop(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Pushes the state to every ready worker that does not hold it yet (policies
        changed by discovery or the directory move ``generation``: checked too)."""
        task_status.started()
        while True:
            key = self._state_key()
            bodies: dict = {}  # one body per state the workers hold (usually one)
            for w in self.workers:
                if w.ready and w.synced != key:
                    body = bodies.get(w.synced) or bodies.setdefault(w.synced, json.dumps(self.state_since(w.synced)))
                    try:
                        status, resp = await trio.to_thread.run_sync(_request, w, "PUT", "/v1/internal/state", body)
                    except AdminUnavailable as e:
                        logger.warning("worker %d: state not delivered: %s", w.index, e)
                        continue
                    if status == 200:
                        w.synced = key
                    else:
                        logger.error("worker %d refused the state: %s", w.index, resp)
            self._changed = trio.Event()
            with trio.move_on_after(0.2):
                await self._changed.wait()

    # ---- processes -----------------------------------------------------------------------
    def write_configs(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for w in self.workers:
            cfg = worker_config(self.config, w.index, self.state_dir)
            Path(cfg["state_dir"]).mkdir(parents=True, exist_ok=True, mode=0o700)
            Path(w.config_path).write_text(yaml.safe_dump(cfg, sort_keys=False))

    async def run_worker(self, w: Worker, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Start worker ``w``, wait until it is ready, and keep it running: a worker that
        exits while the node is not draining is started again with capped backoff."""
        backoff = RESTART_FIRST_S
        first = True
        while True:
            w.ready, w.synced = False, None
            cmd = [sys.executable, "-m", "agent", "--log-format", _log_format(), "run", "--config", w.config_path,
                   "--worker", str(w.index)]
            w.process = await trio.lowlevel.open_process(cmd, preexec_fn=_pdeathsig, stdin=subprocess.DEVNULL)
            w.started_at = time.monotonic()
            await self._wait_ready(w)
            if first:
                task_status.started()
                first = False
            code = await w.process.wait()
            w.ready = False
            w.last_exit = code
            if self.draining:
                return
            w.restarts += 1
            self.count("worker_restarts")
            if time.monotonic() - w.started_at > RESTART_RESET_S:
                backoff = RESTART_FIRST_S
            logger.error("worker %d (pid %d) exited with %s; starting it again in %.1f s", w.index, w.process.pid,
                         _exit(code), backoff)
            await trio.sleep(backoff)
            backoff = min(RESTART_CAP_S, backoff * 2)

    async def _wait_ready(self, w: Worker) -> None:
        deadline = trio.current_time() + READY_TIMEOUT_S
        while trio.current_time() < deadline and w.process.returncode is None:
            try:
                status, body = await trio.to_thread.run_sync(_request, w, "GET", "/v1/status", None)
                if status == 200 and body.get("ready"):
                    w.ready = True
                    self._changed.set()  # push the state to it now
                    logger.info("worker %d ready", w.index, extra={"pid": w.process.pid})
                    return
            except AdminUnavailable:
                pass
            await trio.sleep(0.05)
        if w.process.returncode is None:
            logger.error("worker %d not ready after %.0f s; stopping it", w.index, READY_TIMEOUT_S)
            w.process.kill()

    async def drain_workers(self) -> None:
        for w in self.workers:
            if w.process is not None and w.process.returncode is None:
                w.process.send_signal(signal.SIGTERM)
        for w in self.workers:
            if w.process is not None:
                await w.process.wait()

    async def poll_metrics(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Every second, the workers' metrics merged into one registry for :15020."""
        task_status.started()
        while True:
            merged = Metrics(self.config.telemetry.max_series)
            for w in self.workers:
                if not w.ready:
                    continue
                try:
                    status, snap = await trio.to_thread.run_sync(_request, w, "GET", "/v1/internal/metrics", None)
                except AdminUnavailable:
                    continue
                if status == 200:
                    w.snapshot = snap
                    merged.merge(snap.get("metrics") or {})
            self.merged = merged
            await trio.sleep(METRICS_POLL_S)

    # ---- the agent API, gathered from the workers ----------------------------------------
    def metrics_registry(self):
        return self.merged

    def active_connections(self) -> int:
        return sum(w.snapshot.get("connections") or 0 for w in self.workers)

    def event_counters(self) -> dict[str, int]:
        out = dict(self.counters)
        for w in self.workers:
            for k, v in (w.snapshot.get("counters") or {}).items():
                out[k] = out.get(k, 0) + v
        return out

    def status(self) -> dict[str, Any]:
        out = super().status()
        out["workers"] = len(self.workers)
        out["worker_processes"] = [w.to_json() for w in self.workers]
        out["counts"]["connections"] = self.active_connections()
        return out

    async def _gather(self, path: str) -> list[tuple[Worker, Any]]:
        out = []
        for w in self.workers:
            if not w.ready:
                continue
            try:
                status, body = await trio.to_thread.run_sync(_request, w, "GET", path, None)
            except AdminUnavailable:
                continue
            if status == 200:
                out.append((w, body))
        return out

    async def connections(self) -> list[dict[str, Any]]:
        return [dict(c, worker=w.index) for w, rows in await self._gather("/v1/connections") for c in rows]

    async def certs(self) -> list[dict[str, Any]]:
        got = await self._gather("/v1/certs")
        return got[0][1] if got else []

    async def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"counters": dict(sorted(self.counters.items())), "workers": []}
        for w, s in await self._gather("/v1/stats"):
            for k, v in s.get("counters", {}).items():
                out["counters"][k] = out["counters"].get(k, 0) + v
            out["workers"].append(dict(s, index=w.index))
        out["gauges"] = {"connections_active": sum(s.get("gauges", {}).get("connections_active", 0)
                                                   for s in out["workers"]),
                         "workloads": len(self.registry)}
        return out

    async def reload(self) -> dict[str, Any]:
        result = await super().reload()
        self._mark()
        self.write_configs()  # a changed config reaches the workers' own reload
        for w in self.workers:
            if not w.ready:
                continue
            status, body = await trio.to_thread.run_sync(_request, w, "POST", "/v1/reload", "")
            if status != 200:
                err = body.get("error", {}) if isinstance(body, dict) else {}
                raise ApiError(status, err.get("code", "worker_reload_failed"),
                               f"worker {w.index}: {err.get('message', body)}")
            for k in ("ca_changed", "reissued"):
                if k in body:
                    result[k] = result.get(k, 0) + body[k] if k == "reissued" else body[k]
        return result

    async def set_log_level(self, level: str) -> dict[str, Any]:
        out = super().set_log_level(level)
        for w in self.workers:
            if w.ready:
                try:
                    await trio.to_thread.run_sync(_request, w, "PUT", f"/v1/logging?level={level}", "")
                except AdminUnavailable:
                    pass
        return out

    async def traffic_dump(self) -> dict[str, Any]:
        """Rules from here; ejections and clusters per worker (each keeps its own counts)."""
        out = dict(super().traffic_dump(), ejected=[], clusters={})
        for w, d in await self._gather("/v1/traffic"):
            out["ejected"] += [dict(e, worker=w.index) for e in d.get("ejected", [])]
            out["clusters"].update({f"{k} (worker {w.index})": v for k, v in d.get("clusters", {}).items()})
        return out

    async def config_dump(self) -> dict[str, Any]:
        return {"config": self.config.model_dump(), "status": self.status(), "workloads": self.list_workloads(),
                "policies": self.list_policies(), "traffic": await self.traffic_dump(), "certs": await self.certs(),
                "connections": await self.connections(), "stats": await self.stats()}


def _request(w: Worker, method: str, path: str, body):
    return w.client().request(method, path, body)


def _log_format() -> str:
    from agent import log

    return log.current_format()


def _exit(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"


async def run_supervisor(config, config_path: str | None) -> int:
    """``hostmesh run`` with ``dataplane.workers`` > 1 (the single-process agent's
    start order, with the data plane replaced by the workers)."""
    from agent.serve import _load_state, _signals, _start_admin, _start_http, _start_node

    sup = Supervisor(config, config_path)
    sup.drain_requested = trio.Event()
    async with trio.open_nursery() as root:
        await root.start(_signals, sup)
        discovery = await _start_node(sup, root)
        await _load_state(sup, root, discovery)
        sup.write_configs()
        await root.start(sup.sync_loop)
        for w in sup.workers:
            await root.start(sup.run_worker, w)
        await root.start(sup.poll_metrics)
        await _start_admin(sup, root)
        await _start_http(sup, root)
        sup.ready = True
        logger.info("ready", extra={"node": config.node.name, "workers": len(sup.workers),
                                    "workloads": len(sup.registry)})
        await sup.drain_requested.wait()
        sup.draining = True
        await sup.drain_workers()
        root.cancel_scope.cancel()
    logger.info("stopped")
    return 0
