"""The running agent's state and the facade the admin API drives (``agent.api.AgentAPI``).

``Agent`` owns the registry, policies, identities, telemetry, capture and the table of
live connections, and keeps them consistent: registering a workload enrols its capture,
prepares its identity and makes it routable in one step; removing it undoes all three
and closes its connections. It starts nothing itself: ``agent.serve.run_agent`` owns the
tasks. Methods here are synchronous and cheap, except reload and drain.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from agent import __version__, log
from agent.config import Config, ConfigError, load_config
from agent.errors import ApiError
from agent.proxy.conns import ConnTable
from agent.proxy.plan import EndpointHealth, RoutingView, build_view
from agent.state.workloads import Registry, Workload, WorkloadError, workload_from_json

API_WORKLOADS_FILE = "workloads.json"
logger = logging.getLogger("hostmesh.agent")


def read_policy_dir(path: str, root_namespace: str, traffic: dict | None = None,
                    domain: str = "cluster.local") -> tuple[dict[str, list], dict[str, str]]:
    """Every ``*.yaml``/``*.yml``/``*.json`` in ``path``: (documents by file, the error of
    each file that was rejected). A rejected file never hides the valid ones beside it.
    The DestinationRules and VirtualServices of each file go to ``traffic`` (also by
    file); an invalid one rejects its whole file, authorization policies included."""
    from agent.rbac.loader import load_documents
    from agent.traffic.loader import load_traffic

    d = Path(path)
    if not d.is_dir():
        return {}, {path: f"{path}: policy directory does not exist"}
    out: dict[str, list] = {}
    errors: dict[str, str] = {}
    for f in sorted(d.iterdir()):
        if f.suffix in (".yaml", ".yml", ".json") and f.is_file():
            try:
                text = f.read_text()
                docs = load_documents(text, str(f), root_namespace)
                loaded = load_traffic(text, str(f), domain)
            except (OSError, UnicodeDecodeError) as e:
                errors[str(f)] = f"{f}:1: unreadable: {getattr(e, 'strerror', None) or e}"
                continue
            except ValueError as e:  # PolicyError, TrafficError
                errors[str(f)] = str(e)
                continue
            out[str(f)] = docs
            if traffic is not None:
                traffic[str(f)] = loaded
    return out, errors


def load_policy_dir(path: str, root_namespace: str, traffic: dict | None = None,
                    domain: str = "cluster.local") -> dict[str, list]:
    """All or nothing (reload, check-config): ValueError with every rejected file's
    ``path:line: message`` lines."""
    files, errors = read_policy_dir(path, root_namespace, traffic, domain)
    if errors:
        raise ValueError("\n".join(errors.values()))
    return files


class Agent:
    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.started = time.time()
        self.registry = Registry()
        self.conns = ConnTable()
        self.health = EndpointHealth()
        from agent.traffic.store import TrafficStore

        self.traffic = TrafficStore(config.policies.root_namespace, config.policies.cluster_domain)
        self.view: RoutingView = build_view(config, self.registry, self.traffic)
        self.ready = False
        self.draining = False
        self.counters: dict[str, int] = {}
        from agent.rbac.store import PolicyStore

        self.policies = PolicyStore(config.policies.root_namespace)
        self.identities = None
        self.telemetry = None
        self.capture = None
        self.engine = None  # the native core's glue (proxy/native.py), set once it runs
        self.listen_ports: list[int] = []  # data-plane ports, set by serve_dataplane (drain hand-over)
        self.drain_requested = None  # a trio.Event set by serve
        self.reload_requested = None
        self.discovery = None  # agent.k8s.discovery, when kubernetes.enabled
        self.api_uids: set[str] = set()  # registered through the admin API (persisted)
        from agent.policy_sources import PolicySources

        # every policy change goes through here: parsed beside the deciding thread, swapped
        # atomically, API sources persisted; rejected sources keep the node not ready
        self.policy_sources = PolicySources(self)
        self.config_uids: set[str] = set()  # from the config's workloads (reload reconciles)

    # ---- internal helpers -------------------------------------------------------
    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def register(self, w: Workload) -> None:
        """Registry + capture + identity for one workload (raises WorkloadError)."""
        change = self.registry.register(w)
        self.decisions_changed()
        self.health.traffic.endpoints_changed()  # subsets and localities are made again
        old = change.removed
        if old is not None and old.node is None:
            if self.capture is not None:
                gone = [ip for ip in old.ips if ip not in w.ips or w.node is not None]
                if gone:
                    self.capture.unenrol(gone)
            if self.identities is not None:
                self.identities.release(*old.identity_key)
        if w.node is None:
            if self.capture is not None:
                self.capture.enrol(list(w.ips))
            if self.identities is not None:
                self.identities.ensure(*w.identity_key)

    def unregister(self, uid: str) -> Workload | None:
        change = self.registry.remove(uid)
        self.decisions_changed()
        self.health.traffic.endpoints_changed()
        w = change.removed
        if w is None:
            return None
        if w.node is None:
            for conn_id in self.conns.ids_for_ips(set(w.ips)):
                self.close_connection(conn_id, "workload_removed")
            if self.capture is not None:
                self.capture.unenrol(list(w.ips))
            if self.identities is not None:
                self.identities.release(*w.identity_key)
        return w

    def cluster_changed(self, services: dict | None = None) -> None:
        """Peers or services changed (Kubernetes discovery): rebuild the routing view; with
        ``services`` ({(vip, port): ServiceConfig, None: gone}) only those entries change
        (one EndpointSlice event must not rebuild every service)."""
        if services is None:
            self.view = build_view(self.config, self.registry, self.traffic)
        else:
            from agent.proxy.plan import with_services

            self.view = with_services(self.view, services)  # one new view, swapped in whole
        self.decisions_changed()

    def decisions_changed(self) -> None:
        """Something a connection's decision reads changed: answers the core stored for
        repeat flows are dropped now, before anything else is decided (proxy/repeat.py)."""
        changed = getattr(self.engine, "decisions_changed", None)
        if changed is not None:
            changed()

    def metrics_registry(self):
        """The Istio/hostmesh series :15020 renders."""
        if self.telemetry is None:
            return None
        from agent.proxy.traffic_path import gauges

        gauges(self, self.telemetry.metrics)
        return self.telemetry.metrics

    def active_connections(self) -> int:
        return len(self.conns)

    def event_counters(self) -> dict[str, int]:
        """Counters for /metrics (``hostmesh_events_total``), the core's included as
        ``native_<name>`` (proxy/native.py copies them)."""
        return self.counters

    def close_connection(self, conn_id: int, reason: str) -> None:
        c = self.conns.get(conn_id)
        if c is None:
            return
        c.close_reason = reason
        if self.engine is not None and c.in_engine:
            self.engine.close(conn_id, reason)
        elif c.cancel_scope is not None:
            c.cancel_scope.cancel()

    def recheck_connections(self, only: Callable[[Any], bool] | None = None) -> int:
        """Re-evaluate live connections this node enforces; close the ones now denied.
        ``only``: the connections a change can affect (the others are not evaluated)."""
        from agent.proxy.enforce import recheck

        closed = 0
        for c in list(self.conns):
            if only is not None and not only(c):
                continue
            d = recheck(self, c)
            if d is not None and d.verdict == "deny":
                c.verdict, c.policy, c.reason = "deny", d.policy, f"policy_changed: {d.reason}"
                self.close_connection(c.id, "policy_changed")
                closed += 1
        return closed

    # ---- AgentAPI -----------------------------------------------------------------
    def is_ready(self) -> bool:
        """Started, not draining, and every policy source in force (readiness, status)."""
        return bool(self.ready) and not self.draining and not self.policy_sources.problems

    def not_ready_reason(self) -> str:
        if self.draining:
            return "draining"
        if self.policy_sources.problems:
            # each error already starts with its path:line
            return "policy source rejected: " + "; ".join(
                (e.splitlines() or [s])[0] for s, e in sorted(self.policy_sources.problems.items()))
        return "starting" if not self.ready else ""

    def status(self) -> dict[str, Any]:
        return {
            "node": self.config.node.name,
            "version": __version__,
            "uptime_s": round(time.time() - self.started, 3),
            "ready": self.is_ready(),
            "draining": self.draining,
            "problems": self.policy_sources.status(),
            "workers": self.config.dataplane.workers,
            "pid": os.getpid(),
            "counts": {
                "workloads": len(self.registry),
                "local_workloads": len(self.registry.local()),
                "policies": len(self.policies.list()),
                "connections": len(self.conns),
                "identities": len(self.registry.local_identities()),
            },
        }

    def list_workloads(self) -> list[dict[str, Any]]:
        return [w.to_json() for w in sorted(self.registry, key=lambda w: w.uid)]

    def add_workload(self, body: Any) -> dict[str, Any]:
        try:
            w = workload_from_json(body, local_node=self.config.node.name)
            self.register(w)
        except WorkloadError as e:
            raise ApiError(400, "invalid_workload", str(e)) from None
        self.api_uids.add(w.uid)
        self.save_api_workloads()
        return w.to_json()

    def remove_workload(self, uid: str) -> dict[str, Any]:
        w = self.unregister(uid)
        if w is None:
            raise ApiError(404, "not_found", f"no workload with uid {uid!r}")
        self.api_uids.discard(uid)
        self.save_api_workloads()
        return w.to_json()

    # ---- workloads registered through the API survive a restart -----------------------
    # A CNI plugin calls ADD once, when the pod starts: an agent restarted later (an
    # upgrade, a crash) must still know the pod, or capture would refuse its traffic.
    def _api_workloads_path(self) -> Path:
        return Path(self.config.state_dir) / API_WORKLOADS_FILE

    def save_api_workloads(self) -> None:
        rows = [w.to_json() for uid in sorted(self.api_uids) if (w := self.registry.get(uid)) is not None]
        path = self._api_workloads_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(rows, f)
            os.replace(tmp, path)
        except OSError as e:
            self.count("workloads_save_failures")
            logger.warning("workloads registered through the API not saved to %s: %s", path, e.strerror or e)

    def load_api_workloads(self) -> int:
        """Workloads the admin API registered before a restart (``<state_dir>/workloads.json``);
        a row that no longer validates is logged and dropped."""
        path = self._api_workloads_path()
        try:
            rows = json.loads(path.read_text())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as e:
            logger.warning("%s unreadable (%s): workloads registered through the API before the restart are lost",
                           path, e)
            return 0
        n = 0
        for body in rows if isinstance(rows, list) else []:
            try:
                w = workload_from_json(body, local_node=self.config.node.name)
            except WorkloadError as e:
                logger.warning("%s: workload %s dropped: %s", path, body.get("uid") if isinstance(body, dict) else "?", e)
                continue
            self.register(w)
            self.api_uids.add(w.uid)
            n += 1
        if n:
            logger.info("workloads registered through the API restored", extra={"count": n, "file": str(path)})
        return n

    def reconcile_config_workloads(self, bodies: list[dict]) -> None:
        """The config's ``workloads`` (start and reload): new and changed ones registered,
        ones the config no longer lists removed. Raises WorkloadError before changing
        anything when one is invalid."""
        wanted = self._workloads(bodies)
        self._converge(self.config_uids, wanted)
        self.config_uids = set(wanted)

    def _workloads(self, bodies) -> dict[str, Workload]:
        """Workload bodies -> by uid; raises WorkloadError on the first invalid one."""
        out = {}
        for body in bodies:
            w = workload_from_json(body, local_node=self.config.node.name)
            out[w.uid] = w
        return out

    def _converge(self, owned: set[str], wanted: dict[str, Workload]) -> tuple[int, int]:
        """Remove the ``owned`` workloads no longer wanted, register new and changed
        ``wanted`` ones; (registered, removed)."""
        gone = sorted(owned - set(wanted))
        for uid in gone:
            self.unregister(uid)
        changed = [w for uid, w in wanted.items() if self.registry.get(uid) != w]
        for w in changed:
            self.register(w)
        return len(changed), len(gone)

    def list_policies(self) -> list[dict[str, Any]]:
        return self.policies.list()

    async def apply_policies(self, text: str, source: str) -> dict[str, Any]:
        """Parsed and compiled beside the deciding thread, swapped in, saved in state_dir.
        Traffic documents of the same text are validated first: an invalid one rejects
        the whole text."""
        from agent.traffic.loader import load_traffic

        try:
            traffic = await trio.to_thread.run_sync(load_traffic, text, source, self.config.policies.cluster_domain)
        except ValueError as e:  # TrafficError, or a PolicyError of the bounded YAML reader
            raise ApiError(400, "invalid_traffic_rule", str(e)) from None
        docs = await self.policy_sources.apply(text, source)
        if traffic:
            self.traffic.apply(traffic, source)
            await self.policy_sources.save()  # the traffic documents survive a restart too
        closed = self.recheck_connections()
        return {"applied": [f"{d.namespace}/{d.name}" for d in docs] + [f"{t.doc.namespace}/{t.doc.name}" for t in traffic],
                "connections_closed": closed}

    async def delete_policy(self, namespace: str, name: str) -> dict[str, Any]:
        traffic = self.traffic.delete(namespace, name)  # a DestinationRule/VirtualService of that name
        if traffic:
            await self.policy_sources.save()
        if not await self.policy_sources.delete(namespace, name) and not traffic:
            raise ApiError(404, "not_found", f"no policy {namespace}/{name}")
        self.recheck_connections()
        return {"deleted": f"{namespace}/{name}"}

    def traffic_dump(self) -> dict[str, Any]:
        """The traffic rules in force and the endpoints ejected now, with why."""
        import trio

        state = self.health.traffic
        try:
            now = trio.current_time()
        except RuntimeError:  # outside trio (tests, the CLI): nothing is ejected yet
            now = 0.0
        return {"rules": self.traffic.list(), "ejected": state.ejected(now),
                "clusters": {name: {"active": c.active, "endpoints": list(c.endpoints),
                                    "overflow": state.overflow.get(name, 0)}
                             for name, c in sorted(state.clusters.items())}}

    def certs(self) -> list[dict[str, Any]]:
        return self.identities.status() if self.identities is not None else []

    def connections(self) -> list[dict[str, Any]]:
        engine_stats = self.engine.snapshot() if self.engine is not None else []
        by_id = {s.conn_id: s for s in engine_stats} if engine_stats else {}
        return [c.to_json(by_id.get(c.id)) for c in self.conns]

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"counters": dict(sorted(self.counters.items()))}
        out["gauges"] = {"connections_active": len(self.conns), "workloads": len(self.registry)}
        if self.telemetry is not None:
            out["telemetry"] = self.telemetry.stats()
        if self.engine is not None:
            out["engine"] = self.engine.statistics()
        if self.discovery is not None:
            out["kubernetes"] = self.discovery.stats()
        return out

    def set_log_level(self, level: str) -> dict[str, Any]:
        if level not in ("debug", "info", "warning", "error"):
            raise ApiError(400, "invalid_level", f"level must be debug, info, warning or error, not {level!r}")
        log.set_level(level)
        return {"level": level}

    async def reload(self) -> dict[str, Any]:
        """Re-read the config's peers, services and workloads, the policy directory and the
        CA material (trust bundle, node CA); all or nothing: anything invalid answers 400
        and leaves what is in force."""
        result: dict[str, Any] = {}
        identity = self.config.identity
        policies_cfg = self.config.policies
        new = None
        if self.config_path:
            try:
                new = await trio.to_thread.run_sync(load_config, self.config_path)
            except ConfigError as e:
                raise ApiError(400, "invalid_config", str(e)) from None
            if new.identity.trust_domain != identity.trust_domain:
                raise ApiError(400, "invalid_config", "identity.trust_domain cannot change on reload (restart the agent)")
            identity, policies_cfg = new.identity, new.policies
            bodies = [wc.to_dict(exclude_none=True) for wc in new.workloads]
            for body in bodies:
                try:
                    workload_from_json(body, local_node=self.config.node.name)
                except WorkloadError as e:
                    raise ApiError(400, "invalid_config", f"workloads: {body.get('uid')}: {e}") from None
        files = None
        traffic: dict[str, list] = {}
        if policies_cfg.dir:
            try:
                files = await trio.to_thread.run_sync(load_policy_dir, policies_cfg.dir, policies_cfg.root_namespace,
                                                      traffic, policies_cfg.cluster_domain)
            except ValueError as e:
                raise ApiError(400, "invalid_policy", str(e)) from None
        if self.identities is not None:
            try:
                result.update(self.identities.reload_ca(identity))
            except ValueError as e:
                raise ApiError(400, "invalid_ca", str(e)) from None
        self.config.identity, self.config.policies = identity, policies_cfg
        self.decisions_changed()
        if new is not None:
            self.reconcile_config_workloads(bodies)
            result["config_workloads"] = len(self.config_uids)
            if self.discovery is not None:  # discovered peers and services stay, merged anew
                self.discovery.set_static(new.cluster.nodes, new.cluster.services)
            else:
                c = self.config.cluster
                if new.cluster.pod_cidrs != c.pod_cidrs:
                    logger.warning("cluster.pod_cidrs changed: the capture rules take it at the next start")
                if (new.cluster.nodes, new.cluster.services) != (c.nodes, c.services):
                    c.nodes, c.services = new.cluster.nodes, new.cluster.services
                    self.cluster_changed()
                    result["cluster_changed"] = True
        if files is not None:
            # files gone from the directory since the last read take their policies along
            gone = {src: [] for src in self.policies.sources() if src.startswith(policies_cfg.dir.rstrip("/") + "/")
                    and src not in files}
            await self.policy_sources.replace({**gone, **files})
            self.policy_sources.dir_reloaded(set(files), policies_cfg.dir.rstrip("/"))
            for source in [src for src in self.traffic.sources() if src.startswith(policies_cfg.dir.rstrip("/") + "/")
                           and src not in traffic]:
                self.traffic.replace_source(source, [])
            for source, loaded in traffic.items():
                self.traffic.replace_source(source, loaded)
            result["policy_files"] = len(files)
        result["connections_closed"] = self.recheck_connections()
        return result

    async def drain(self) -> dict[str, Any]:
        if self.drain_requested is not None:
            self.drain_requested.set()
        self.draining = True
        return {"draining": True, "deadline_s": self.config.drain.deadline_s}

    def config_dump(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "status": self.status(),
            "workloads": self.list_workloads(),
            "policies": self.list_policies(),
            "traffic": self.traffic_dump(),
            "certs": self.certs(),
            "connections": self.connections(),
            "stats": self.stats(),
        }
