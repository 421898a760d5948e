"""Answers for repeat flows (decisions/0006): what Python hands the core so a tunnel
stream it has already judged is answered in the core, and what it needs to record such a
connection exactly as if it had decided it.

A stored answer is valid for one **generation**. Every change that can move a decision
(a policy swap, a traffic-rule rebuild, a workload registered or removed, the routing
view or the config replaced) bumps it before anything else runs on the trio thread, and
the core empties its table on the bump, so no connection is ever answered across a
change. ``world`` is the same inputs read back as a tuple: checked before each batch of
events (changes run on the trio thread between batches), it catches a change whose hook
was missed (counted ``decision_cache_unhooked_change``; the generation is bumped and the
batch's cached connections are judged again).

What is stored: at the destination, an allow (or audit) that carries a plain connect
for a tunnel stream: no L7 serving or HTTP metrics (``inspect_http``,
``http_reporters``), no dry-run match (it logs per connection), no ``forwarded``
mismatch (it logs per connection). At the source, a captured connection's tunnel to one
pod: a plan of exactly one route with no service and no traffic cluster (so no load
balancing, outlier detection or connection limit chooses per connection), not
observed for HTTP metrics, not an HTTP-routed leg, not on a CONNECT fallback (its
60 s window is a clock); the core sends each repeat its own ``forwarded`` and a fresh
``traceparent``. Pure:
no trio, no sockets, no clock. Must never: give an answer for an entry it did not
store, or hold more than ``MAX_ENTRIES``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from agent.proxy.conns import Conn

# Entries Python keeps to record cached connections: twice the core's table
# (limits.rs MAX_CACHED_DECISIONS), so an entry outlives the core's by a whole table's
# worth of new decisions: a cached event still queued when its entry was replaced finds it.
MAX_ENTRIES = 8192
# Counters whose movement makes a decision unfit to store (each logs per connection).
_UNFIT = frozenset({"tunnel_source_mismatch", "tunnel_forwarded_mismatch"})


@dataclass(frozen=True, slots=True)
class Entry:
    template: Conn  # the decided connection (its per-connection fields are replaced)
    port_from: str  # where the source port comes from: "peer", "forwarded" or "none"
    counts: tuple[tuple[str, int], ...]  # what the decision counted, replayed per connection
    metric: tuple[str, str] | None  # hostmesh_policy_decisions_total labels
    generation: int
    # a captured connection's: its plan (one route), for a failed attempt and the finish
    plans: tuple = ()
    route: Any = None
    protocol: str = ""


def world(agent) -> tuple:
    """The inputs a tunnel stream's decision reads, as identities and generations."""
    cfg = agent.config
    traffic = getattr(agent, "traffic", None)
    return (agent.policies.generation, agent.registry.generation, getattr(traffic, "generation", 0),
            id(agent.view), id(cfg.identity), id(cfg.policies), id(cfg.cluster), id(cfg.dataplane))


@contextmanager
def counting(agent) -> Iterator[list]:
    """Every ``agent.count`` made inside the block, in order (still counted)."""
    counts: list[tuple[str, int]] = []
    own = vars(agent).get("count")
    inner = agent.count

    def count(name: str, n: int = 1) -> None:
        counts.append((name, n))
        inner(name, n)

    agent.count = count
    try:
        yield counts
    finally:
        if own is None:
            del agent.count
        else:
            agent.count = own


def fit(counts: list[tuple[str, int]], decision) -> bool:
    """Whether a decision may be stored (see the module docstring)."""
    if decision is None or decision.verdict == "deny" or getattr(decision, "dry_run_matches", ()):
        return False
    return not any(name in _UNFIT for name, _ in counts)


def port_from(conn: Conn, protocol: str, peer, forwarded) -> str:
    if protocol == "hbone":
        return "peer"
    if forwarded and conn.src_ip == forwarded[0] and conn.src_port == forwarded[1]:
        return "forwarded"
    return "none"


def source_port(e: Entry, peer, forwarded) -> int:
    if e.port_from == "peer":
        return peer[1]
    if e.port_from == "forwarded" and forwarded:
        return forwarded[1]
    return 0


def instance(t: Conn, src_port: int, start: float) -> Conn:
    """A connection with ``t``'s decision (an entry's template, or the decided connection
    a template is made from), its own source port and times (trace ids are the caller's)."""
    return Conn(t.direction, t.mode, t.src_ip, src_port, t.dst_ip, t.dst_port, start, 0.0, t.src, t.dst,
                t.src_principal, t.dst_principal, t.verdict, t.policy, t.reason, enforced_here=t.enforced_here)


class Table:
    """Entries by id, the oldest dropped past ``MAX_ENTRIES``; and the generation."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._max = max_entries
        self._entries: dict[int, Entry] = {}
        self._ids = itertools.count(1)
        self.generation = 1

    def __len__(self) -> int:
        return len(self._entries)

    def bump(self) -> int:
        self.generation += 1
        return self.generation

    def reserve(self) -> int:
        """An entry id for an answer whose entry is ``put`` before any event is handled."""
        return next(self._ids)

    def put(self, n: int, e: Entry) -> None:
        if len(self._entries) >= self._max:
            for k in list(itertools.islice(self._entries, self._max // 2)):
                del self._entries[k]
        self._entries[n] = e

    def add(self, e: Entry) -> int:
        n = self.reserve()
        self.put(n, e)
        return n

    def get(self, n: int) -> Entry | None:
        return self._entries.get(n)
