"""The policy sources of a running agent: the admin API (PUT /v1/policies, ``lab apply``),
the policy directory, the Kubernetes watch and the supervisor's pushes, each changed
beside the thread that decides connections and swapped in atomically.

Every change parses, validates and compiles in a worker thread (``trio.to_thread``)
into a new ``PolicySet``, then swaps it in with one assignment on the trio thread; one
change at a time (a lock), and a change prepared from a generation that moved on is
prepared again, so none is lost. Sources applied through the admin API are written to
``<state_dir>/policies.json`` (atomically: temporary file, fsync, rename) and restored
at start. A source that is rejected at start (a bad file, an unreadable state file)
is kept in ``problems``: the node reports not ready, and says why, until it is fixed.
It must never enforce less than the operator wrote without saying so.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from agent.errors import ApiError

logger = logging.getLogger("hostmesh.policy")
API_POLICIES_FILE = "policies.json"
STATE_VERSION = 1
# While a change is prepared in its thread, the interpreter hands the GIL to the trio
# thread after at most this long (default 5 ms), so a decision waits less for it.
LOAD_SWITCH_INTERVAL_S = 0.0005


def _beside(fn: Callable[[], Any], reenable_gc: bool = True) -> Callable[[], Any]:
    """``fn`` as run in the loading thread: the cyclic collector paused (a full
    collection over a large policy set is one 100+ ms stretch holding the GIL, on
    whichever thread triggers it) and a short GIL switch interval. ``reenable_gc``
    False: the caller turns the collector back on (after moving the new objects to the
    oldest generation)."""
    def run():
        interval = sys.getswitchinterval()
        gc.disable()
        sys.setswitchinterval(min(interval, LOAD_SWITCH_INTERVAL_S))
        try:
            return fn()
        finally:
            sys.setswitchinterval(interval)
            if reenable_gc:
                gc.enable()
    return run


def _clear_frames(e: BaseException | None, depth: int = 0) -> None:
    """The frames of ``e``'s traceback and of the exceptions it chains, cleared."""
    while e is not None and depth < 8:
        traceback.clear_frames(e.__traceback__)
        if e.__cause__ is not None:
            _clear_frames(e.__cause__, depth + 1)
        e, depth = e.__context__, depth + 1


class PolicySources:
    def __init__(self, agent) -> None:
        self.agent = agent
        self.api_sources: set[str] = set()
        self.problems: dict[str, str] = {}  # source -> why it was rejected
        self._lock: trio.Lock | None = None

    @property
    def store(self):
        return self.agent.policies

    @property
    def root(self) -> str:
        return self.agent.config.policies.root_namespace

    # ---- the one way policies change ------------------------------------------------
    async def change(self, prepare: Callable[[], tuple[Any, Any]]) -> Any:
        """``prepare() -> (result, new PolicySet or None)`` runs in a thread; the set
        is swapped in on the trio thread. Exceptions of ``prepare`` propagate."""
        if self._lock is None:
            self._lock = trio.Lock()
        async with self._lock:
            gc_was_enabled = gc.isenabled()
            try:
                while True:
                    base = self.store.generation
                    try:
                        result, new = await trio.to_thread.run_sync(_beside(prepare, reenable_gc=False))
                    except BaseException as e:
                        # the traceback's frames hold the half-built set in a cycle: cleared
                        # here, freed by reference counting rather than a long collection
                        _clear_frames(e)
                        raise
                    if new is None:
                        return result
                    if self.store.swap(new, base):
                        del new
                        # the load's objects are long-lived: moved to the oldest generation
                        # (freeze + unfreeze, two list splices) BEFORE the collector runs
                        # again, so the next young collection does not walk a million of
                        # them on the deciding thread (60+ ms measured). Not left frozen:
                        # a full collection still frees any cycle among them later.
                        gc.freeze()
                        gc.unfreeze()
                        retired = self.store.retired[:]
                        self.store.retired.clear()
                        await trio.to_thread.run_sync(retired.clear)  # the old set is freed there
                        return result
            finally:
                if gc_was_enabled:
                    gc.enable()

    async def apply(self, text: str, source: str) -> list:
        from agent.rbac.loader import PolicyError, load_documents

        def prepare():
            docs = load_documents(text, source, self.root)
            return docs, self.store.prepare_apply(docs, source)

        try:
            docs = await self.change(prepare)
        except PolicyError as e:
            raise ApiError(400, "invalid_policy", str(e)) from None
        self.api_sources.add(source)
        self.problems.pop(source, None)
        await self.save()
        return docs

    async def delete(self, namespace: str, name: str) -> bool:
        def prepare():
            new = self.store.prepare_delete(namespace, name)
            return new is not None, new

        deleted = await self.change(prepare)
        if deleted:
            await self.save()
        return deleted

    async def replace(self, sources: dict[str, list], only: bool = False) -> None:
        """Documents already loaded (reload, a worker's sync) put in force, per source."""
        await self.change(lambda: (None, self.store.prepare_sources(sources, only)))

    # ---- persistence of API-applied sources ----------------------------------------
    def _path(self) -> Path:
        return Path(self.agent.config.state_dir) / API_POLICIES_FILE

    async def save(self) -> None:
        from agent.rbac.loader import to_document

        snapshot, names, path = self.store.snapshot(), sorted(self.api_sources), self._path()
        store = getattr(self.agent, "traffic", None)  # DestinationRules/VirtualServices, as written
        traffic = store.sources() if store is not None else {}

        def write():
            by_source: dict[str, list] = {n: [] for n in names}
            for doc, source in snapshot.docs.values():
                if source in by_source:
                    by_source[source].append(json.dumps(to_document(doc)))  # one short C call each
            for source in names:
                by_source[source] += [json.dumps(raw) for raw in traffic.get(source, [])]
            body = (f'{{"version": {STATE_VERSION}, "sources": {{\n'
                    + ",\n".join(f"{json.dumps(n)}: [\n" + ",\n".join(rows) + "]" for n, rows in by_source.items())
                    + "}}\n")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)

        try:
            await trio.to_thread.run_sync(_beside(write))
        except OSError as e:
            self.agent.count("policies_save_failures")
            logger.error("policies applied through the API not saved to %s: %s; they will not survive a restart",
                         path, e.strerror or e)

    def _read_saved(self, traffic: dict[str, list]) -> tuple[dict[str, list], dict[str, str]]:
        """(documents by source, problems) from the state file, the traffic documents of
        each source into ``traffic``; runs in a thread."""
        from agent.rbac.loader import load_documents

        path = self._path()
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            return {}, {}
        except (OSError, ValueError) as e:
            return {}, {str(path): f"{path}:1: unreadable, the policies applied through the API are not restored: {e}"}
        sources = state.get("sources") if isinstance(state, dict) else None
        if not isinstance(sources, dict):
            return {}, {str(path): f"{path}:1: not a hostmesh policy state file (no 'sources')"}
        from agent.traffic.loader import load_traffic

        out, problems = {}, {}
        for source, docs in sources.items():
            text = json.dumps(docs)
            try:
                out[source] = load_documents(text, f"{path}#{source}", self.root)
                traffic[source] = load_traffic(text, f"{path}#{source}", self.agent.config.policies.cluster_domain)
            except ValueError as e:  # PolicyError, TrafficError
                out.pop(source, None)
                problems[source] = str(e)
        return out, problems

    # ---- start-up ------------------------------------------------------------------
    async def load_at_start(self) -> None:
        """The policy directory and the saved API sources: every valid source in force,
        each rejected one in ``problems`` (logged; the node stays not ready)."""
        from agent.app import read_policy_dir

        cfg = self.agent.config.policies

        traffic: dict[str, list] = {}  # DestinationRules/VirtualServices by source

        def prepare():
            traffic.clear()
            files, problems = (read_policy_dir(cfg.dir, cfg.root_namespace, traffic, cfg.cluster_domain)
                               if cfg.dir else ({}, {}))
            saved, saved_problems = self._read_saved(traffic)
            return (files, saved, {**problems, **saved_problems}), self.store.prepare_sources({**files, **saved})

        files, saved, problems = await self.change(prepare)
        store = getattr(self.agent, "traffic", None)
        for source, loaded in traffic.items() if store is not None else ():
            store.replace_source(source, loaded)
        self.api_sources |= set(saved)
        self.problems.update(problems)
        if saved:
            logger.info("policies applied through the API restored",
                        extra={"sources": len(saved), "policies": sum(map(len, saved.values()))})
        for source, why in problems.items():
            logger.error("policy source rejected; the node is NOT ready until it is fixed (then reload): %s", why,
                         extra={"source": source})

    def dir_reloaded(self, dir_sources: set[str], dir_path: str) -> None:
        """A reload read the whole directory: its files' problems are gone."""
        for source in [s for s in self.problems if s in dir_sources or s == dir_path or s.startswith(dir_path + "/")]:
            del self.problems[source]

    def status(self) -> list[dict[str, str]]:
        return [{"source": s, "error": e} for s, e in sorted(self.problems.items())]
