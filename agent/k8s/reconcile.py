"""What discovery changes in the agent: the diff from what is registered to what the
cluster describes, the routing view's peers and services, and the retry schedule.

Pure: no I/O, no clock, no randomness of its own (the shell passes a random number).
``agent.k8s.model`` says what the cluster wants; this module says how to get there from
what the agent holds now, and the shell (``agent.k8s.discovery``) only carries it out.
A plan covers the uids an event (or a batch of events) touched, never the whole
registry: ``plan_changes`` rehearses on an overlay of the registry, not a copy.

Rules this file keeps:
- Discovery removes only workloads it registered (``owned``); a workload the admin API
  or the config registered is never unregistered by it.
- A pod that cannot be registered (invalid field, an address another workload holds)
  is skipped with a reason; the rest still apply (the shell retries it with the next
  change, so an address freed later is taken then). The order of registrations is one the
  registry accepts (an address freed by one change is taken by the next, not before).
- Peers and services from the API come in addition to the config's static ones; on a
  clash (same node name, same VIP and port) the API's win.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from agent.state.workloads import Registry, Workload, WorkloadError, workload_from_json


@dataclass
class WorkloadPlan:
    unregister: list[str] = field(default_factory=list)  # uids, in this order
    register: list[Workload] = field(default_factory=list)  # new or changed, in this order
    skipped: list[str] = field(default_factory=list)  # "ns/name: reason"
    owned: set[str] = field(default_factory=set)  # what discovery owns once applied (full plans)
    gained: set[str] = field(default_factory=set)  # owned once applied, of the uids planned
    lost: set[str] = field(default_factory=set)  # no longer owned, of the uids planned
    failed: set[str] = field(default_factory=set)  # could not be registered (address held): retry later

    def __bool__(self) -> bool:
        return bool(self.unregister or self.register)


class _Overlay:
    """The registry as it would be after some changes, without copying it: reads go to
    the overrides first, then to the real registry (O(size of the change))."""

    def __init__(self, registry: Registry) -> None:
        self.real = registry
        self.uids: dict[str, Workload | None] = {}
        self.ips: dict[str, Workload | None] = {}

    def get(self, uid: str) -> Workload | None:
        return self.uids[uid] if uid in self.uids else self.real.get(uid)

    def by_ip(self, ip: str) -> Workload | None:
        return self.ips[ip] if ip in self.ips else self.real.by_ip(ip)

    def remove(self, uid: str) -> None:
        old = self.get(uid)
        if old is not None:
            for ip in old.ips:
                if (h := self.by_ip(ip)) is not None and h.uid == uid:
                    self.ips[ip] = None
        self.uids[uid] = None

    def register(self, w: Workload) -> None:
        for ip in w.ips:
            other = self.by_ip(ip)
            if other is not None and other.uid != w.uid:
                raise WorkloadError(f"ip: {ip} already belongs to workload {other.uid}")
        self.remove(w.uid)
        self.uids[w.uid] = w
        for ip in w.ips:
            self.ips[ip] = w


def plan_changes(changes: Mapping[str, dict | None], owned: set[str], registry: Registry, node: str) -> WorkloadPlan:
    """The registrations that bring the uids in ``changes`` (uid -> admin-API workload
    body, None: no such pod any more) to what they say, touching only what discovery
    owns or newly claims; every other uid stays as it is. O(size of the change)."""
    if len(changes) == 1:  # one pod changed: the common case has nothing to rehearse
        fast = _one_in_place(changes, owned, registry, node)
        if fast is not None:
            return fast
    return _rehearse(changes, owned, registry, node)


def _rehearse(changes: Mapping[str, dict | None], owned: set[str], registry: Registry, node: str) -> WorkloadPlan:
    """``plan_changes`` for any change: the registrations rehearsed on an overlay."""
    plan = WorkloadPlan()
    wanted: dict[str, Workload] = {}
    for uid, body in sorted(changes.items()):
        if body is None:
            continue
        try:
            wanted[uid] = workload_from_json(body, local_node=node)
        except WorkloadError as e:
            plan.skipped.append(f"{body.get('namespace')}/{body.get('name')}: {e}")
    plan.unregister = sorted(uid for uid in changes if uid not in wanted and uid in owned)
    # Rehearse on an overlay: the registry refuses an address another uid holds, and the
    # order that works (release first, then take) is found by retrying what failed.
    sim = _Overlay(registry)
    for uid in plan.unregister:
        sim.remove(uid)
    pending = [w for uid, w in wanted.items() if registry.get(uid) != w]
    errors: dict[str, str] = {}
    while pending:
        left = []
        for w in pending:
            try:
                sim.register(w)
                plan.register.append(w)
            except WorkloadError as e:
                left.append(w)
                errors[w.uid] = str(e)
        if len(left) == len(pending):
            # Stuck: changes that trade addresses (a cycle). Release the old entry of one
            # of ours that holds an address another change needs; it comes back later.
            changing = {w.uid for w in left}
            holders = {h.uid for w in left for ip in w.ips
                       if (h := sim.by_ip(ip)) is not None and h.uid != w.uid and h.uid in changing & owned}
            if not holders:
                break  # held by a workload that is not ours (admin API, config)
            sim.remove(min(holders))
            plan.unregister.append(min(holders))
        pending = left
    plan.failed = {w.uid for w in pending}  # what no order could register
    plan.skipped += [f"{w.namespace}/{w.name}: {errors[w.uid]}" for w in pending]
    # A changed pod that could not be re-registered keeps its old entry, still ours.
    plan.gained = (set(wanted) - plan.failed) | ((plan.failed & owned) - set(plan.unregister))  # never copies owned
    plan.lost = set(changes) - plan.gained
    return plan


def _one_in_place(changes: Mapping[str, dict | None], owned: set[str], registry: Registry,
                  node: str) -> WorkloadPlan | None:
    """The plan for one owned, registered pod that keeps exactly its addresses (a label,
    its account, its ports changed): re-register it, nothing to rehearse, since the
    addresses it asks for are the ones it holds. None: anything else (``plan_changes``
    works it out)."""
    ((uid, body),) = changes.items()
    cur = registry.get(uid)
    if body is None or cur is None or uid not in owned:
        return None
    try:
        w = workload_from_json(body, local_node=node, known=cur)
    except WorkloadError:
        return None  # the general plan says why, once
    if w.ips != cur.ips:
        return None
    return WorkloadPlan(register=[w] if w != cur else [], gained={uid})


def plan_workloads(bodies: Mapping[str, dict], owned: set[str], registry: Registry, node: str) -> WorkloadPlan:
    """The registrations that turn ``registry`` into the desired pods ``bodies`` (uid ->
    admin-API workload body, every pod discovery knows), touching only what discovery
    owns or newly claims."""
    changes: dict[str, dict | None] = dict.fromkeys(owned - set(bodies))
    changes.update(bodies)
    plan = plan_changes(changes, owned, registry, node)
    plan.owned = (owned - plan.lost) | plan.gained
    return plan


def merge_nodes(static: Sequence, discovered: Sequence) -> list:
    """The config's peers plus the API's, the API's entry winning on a name."""
    names = {n.name for n in discovered}
    return [n for n in static if n.name not in names] + list(discovered)


def merge_services(static: Sequence, discovered: Sequence) -> list:
    """The config's services plus the API's; a static one that claims a VIP and port the
    API also serves is dropped (the routing view keys services by VIP and port)."""
    if not static:
        return list(discovered)
    taken = {(s.vip, p) for s in discovered for p in s.ports}
    return [s for s in static if not any((s.vip, p) in taken for p in s.ports)] + list(discovered)


@dataclass
class Backoff:
    """Exponential, capped, jittered retry delays (client-go's reflector does the same):
    ``first`` doubling to ``cap``, each delay scaled by a factor in [0.5, 1.5)."""

    first: float
    cap: float
    current: float = 0.0

    def next(self, rand: float) -> float:
        """The next delay; ``rand`` in [0, 1) from the caller's random source."""
        self.current = self.first if self.current <= 0 else min(self.cap, self.current * 2)
        return min(self.cap, self.current * (0.5 + rand))

    def reset(self) -> None:
        self.current = 0.0
