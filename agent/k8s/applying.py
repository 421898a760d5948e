"""When and how discovery's changes are applied on the event loop (``agent.k8s.discovery``
mixes this in): right where a watch read's events were taken in (on the loop) for a
small change after a quiet spell, by ``apply_loop`` for a burst (coalesced over ``COALESCE_S``) or a large change
(in batches, yielding to the loop), and how policy changes are put in force (on the
loop when few, else prepared in a thread by ``agent.policy_sources``).

It decides only the scheduling: what a change does is ``agent.k8s.apply``'s. It must
never hold the loop for a large change, never apply while another apply is under way
(an apply may be waiting at a checkpoint), and never let an exception escape the
watch task that took the events in (that would end the watch, not just the apply).
"""

from __future__ import annotations

import logging
import time

import trio

from agent.k8s.apply import BATCH
from agent.k8s.index import Changes
from agent.k8s.model import POLICY_KINDS

logger = logging.getLogger("hostmesh.k8s")

# Changes that come within this window of the last apply are applied together (a burst
# of events); short, because applying is proportional to the change (event to state p99
# target: 50 ms). The first change after a quiet spell is applied at once.
COALESCE_S = 0.01
# A policy change this small is put in force on the event loop when the store can make
# it in place (PolicyStore.prepare_change, measured with the swap: 0.04 ms at 2,000
# policies, 0.46 ms at 10,000: two dict copies) in a set this large at most, or when it
# rebuilds the source (a PeerAuthentication came or went: 2 ms at 2,000 policies, 46 ms
# at 10,000) in one this large at most; anything else is prepared in a thread
# (agent.policy_sources).
INLINE_POLICIES_CHANGED = 16
INLINE_POLICY_SET_MAX = 2000
INLINE_CHANGE_SET_MAX = 20000
INLINE_SERVICES = 16  # services whose entries a change applied where it arrives may touch
YIELD_AFTER_S = 0.002  # an apply lets the event loop run once it has held it this long


class Applying:
    """The apply side of ``Discovery``: needs its ``agent``, ``index``, ``applier``,
    ``counts``/``count``, ``_changed`` (a trio.Event), ``_flushing`` and ``_last_apply``."""

    async def apply_loop(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Apply what the watches changed. A small change after a quiet spell was applied
        where it was delivered (``_delivered``); within ``COALESCE_S`` of the last apply,
        wait out the window and apply what came meanwhile together (a burst)."""
        task_status.started()
        while True:
            await self._changed.wait()
            wait = self._last_apply + COALESCE_S - time.perf_counter()
            if wait > 0:
                await trio.sleep(wait)
            self._changed = trio.Event()
            await self.flush()
            self._last_apply = time.perf_counter()

    def _delivered(self) -> None:
        """Watch events changed the index (on the event loop, where a read was taken in).
        A small change after a quiet spell is applied right here: no task wakes up for
        it, no timer runs (the event's whole cost is its own work). Anything else, or
        while an apply is under way, goes to ``apply_loop``."""
        if (not self._flushing and not self._changed.is_set() and self._small(self.index.pending)
                and time.perf_counter() - self._last_apply >= COALESCE_S):
            try:
                self.apply_now()
            except Exception:  # noqa: BLE001 - a callback must not crash the event loop
                self.count("errors")
                logger.exception("kubernetes: applying a change failed; applying everything again")
                self._resync()
            return
        self._changed.set()

    def _resync(self) -> None:
        """After an apply failed part-way: every object is pending again, so the next
        apply (``apply_loop``) re-plans it all (what is in place already costs one
        comparison), including what discovery had made and the index no longer holds."""
        p, a, ix = self.index.pending, self.applier, self.index
        held = {b["uid"]: b for b in ix.out.values()}
        p.workloads.update(dict.fromkeys(a.owned - held.keys()))
        p.workloads.update(held)
        p.services.update(ix.objects["services"], a.services)
        p.nodes = True
        p.policies.update(*([(k, key) for key in ix.objects[k]] for k in POLICY_KINDS), a.policies, a.traffic)
        self._changed.set()

    def _small(self, c: Changes) -> bool:
        """Whether applying ``c`` fits on the event loop in one go: one batch of pods, a
        few services and policies, no node change (that rebuilds the routing view)."""
        policies = len(c.policies) + self.applier.policies_dirty
        return (not c.nodes and len(c.workloads) + len(self.applier.retry) <= BATCH
                and len(c.services) <= INLINE_SERVICES and policies <= INLINE_POLICIES_CHANGED
                and (not policies or len(self.agent.policies.snapshot().docs) <= INLINE_CHANGE_SET_MAX))

    def apply_now(self) -> None:
        """Apply a small change in one go (``_delivered``; ``_small`` said it fits)."""
        self.counts["applies"] += 1
        for _ in self.applier.steps(self.index, self.index.take()):
            pass
        if not self._commit_small():  # _small keeps this from happening; never lose it
            self._changed.set()
        self._last_apply = time.perf_counter()

    async def flush(self, remerge: bool = False) -> None:
        """Apply what changed, letting the event loop run between batches."""
        self._flushing = True
        try:
            self.counts["applies"] += 1
            last = time.perf_counter()
            for _ in self.applier.steps(self.index, self.index.take(), remerge=remerge):
                if time.perf_counter() - last >= YIELD_AFTER_S:  # a small change runs in one go
                    await trio.sleep(0)
                    last = time.perf_counter()
            if not self._commit_small():  # parsed and compiled beside the deciding thread, swapped in
                a = self.applier
                traffic = a.traffic_dirty
                a.policies_dirty, a.traffic_dirty = 0, False
                await self.agent.policy_sources.replace({"kubernetes": a.policy_docs()})
                if traffic:
                    self.agent.traffic.replace_source("kubernetes", a.traffic_docs())
                self.agent.recheck_connections()
        finally:
            self._flushing = False

    def _commit_small(self) -> bool:
        """Put the loaded policy and traffic changes in force here when they are few in
        a set of this size; False (nothing done) when a thread should prepare them."""
        a = self.applier
        if not (a.policies_dirty or a.traffic_dirty):
            return True
        store = self.agent.policies
        changed, traffic = a.policies_dirty, a.traffic_dirty
        size = len(store.snapshot().docs)
        if changed and (changed > INLINE_POLICIES_CHANGED or size > INLINE_CHANGE_SET_MAX):
            return False
        new = None
        if changed:
            # a few objects: changed in place in O(the change) (agent.rbac.store.
            # PolicyStore.prepare_change), so here, without two thread hand-overs
            new = a.prepared_policies(rebuild=size <= INLINE_POLICY_SET_MAX)
            if new is None:  # a rebuild of a set this large: beside the loop
                return False
        a.policies_dirty, a.traffic_dirty = 0, False
        only = None
        if new is not None:
            if new.base == store.snapshot().serial and not traffic:
                # only the connections to workloads the changed policies select are
                # evaluated again (a connection's decision depends on nothing else)
                only = store.rechecks(new.touched)
            store.swap(new)
        if traffic:
            self.agent.traffic.replace_source("kubernetes", a.traffic_docs())
        if self.agent.conns:  # none live: nothing to evaluate again (nor the enforcer to import)
            self.agent.recheck_connections(only)
        return True

    def apply(self, remerge: bool = False) -> None:
        """Apply what changed in one go (tests, a config reload)."""
        self.counts["applies"] += 1
        for _ in self.applier.steps(self.index, self.index.take(), remerge=remerge):
            pass
        if self.applier.policies_dirty or self.applier.traffic_dirty:
            self.applier.commit_policies()

    def set_static(self, nodes: list, services: list) -> None:
        """The config's peers and services changed (reload): merge them in again."""
        self.applier.static = (list(nodes), list(services))
        self.apply(remerge=True)
