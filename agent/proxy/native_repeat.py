"""The glue's side of answers for repeat flows (decisions/0006, proxy/repeat.py): the
generation bump every change calls, the check for a change no hook told, and recording a
connection the core answered from a stored answer exactly as a decided one (or judging it
again when it was answered across a change). A mixin of ``native.NativeEngine``; it
decides nothing the planner and the policy engine do not. Must never: record a cached
connection without its entry, or leave one answered across a change unjudged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from agent.proxy import enforce, plan, repeat
from agent.proxy.connect import traceparent_ids
from agent.proxy.conns import Conn


@dataclass(slots=True)
class _Pending:
    conn: Conn
    plans: list | tuple = field(default_factory=list)  # only read (a stored entry's tuple)
    next: int = 0
    route: Any = None
    protocol: str = ""  # the tunnel protocol of the current attempt
    leg: bool = False  # a loopback leg of Python's (open_leg): carried out, never diverted again


class RepeatFlows:
    def decisions_changed(self) -> None:
        """A new generation: the core drops every stored answer before this returns."""
        self.core.set_generation(self._repeat.bump())
        self._world = repeat.world(self.agent)

    def _check_world(self) -> None:
        if repeat.world(self.agent) != self._world:  # a change no hook told (repeat.py)
            self.agent.count("decision_cache_unhooked_change")
            self.decisions_changed()

    def _on_cached(self, cid: int, entry: int, at: float, src, dst, tunnel, sent_trace) -> None:
        """A connection the core answered from a stored answer: recorded as if decided
        here; one decided under an older generation is judged again at once."""
        agent = self.agent
        e = self._repeat.get(entry)
        if e is None:  # dropped from the table while the event was queued: not recordable
            agent.count("decision_cache_lost")
            self.core.close(cid, "decision_lost")
            return
        if tunnel is None:  # a captured connection the core tunnelled (the source side)
            conn = repeat.instance(e.template, src[1], at)
            conn.set_trace(sent_trace[3:35], sent_trace[36:52])
            # the entry stands in for its _Pending until an attempt fails (_retried): an
            # idle connection holds no plan of its own
            self._retry[cid] = e
        else:
            _, _, forwarded, traceparent, _, _ = tunnel
            conn = repeat.instance(e.template, repeat.source_port(e, src, forwarded), at)
            ids = traceparent_ids(traceparent) if traceparent else None
            if ids:
                conn.set_trace(*ids, parent=True)
        count = agent.count
        for name, n in e.counts:
            count(name, n)
        tel = getattr(agent, "telemetry", None)
        if tel is not None and e.metric is not None:
            tel.metrics.inc("hostmesh_policy_decisions_total", e.metric)
        self._track(cid, conn)
        # (the world was checked when this batch began: changes run between batches)
        if e.generation != self._repeat.generation:
            self._rejudge(conn)

    @staticmethod
    def _retried(st, conn: Conn | None) -> _Pending | None:
        """A failed attempt's plan: ``st`` itself, or the _Pending a cached connection's
        entry stands for (its one route tried)."""
        if isinstance(st, repeat.Entry) and conn is not None:
            return _Pending(conn, st.plans, 1, st.route, st.protocol)
        return st

    def _rejudge(self, conn: Conn) -> None:
        """A connection the core answered under an older generation: planned and judged
        under the current state; closed when that refuses or denies it (at the source:
        when the plan is no longer that one tunnel)."""
        agent = self.agent
        agent.count("decision_cache_rejudged")
        if conn.direction == "outbound":
            plans = plan.plan_outbound(conn.src_ip, conn.dst_ip, conn.dst_port, agent.view, agent.health,
                                       trio.current_time())
            p = plans[0] if len(plans) == 1 else None
            if not (isinstance(p, plan.Route) and p.kind == "tunnel" and p.dst is conn.dst and p.service is None
                    and p.cluster is None):
                agent.close_connection(conn.id, "decision_changed")
            return
        p = plan.plan_inbound(conn.dst_ip, conn.dst_port, agent.view)
        if isinstance(p, plan.Refuse):
            conn.verdict, conn.reason = "deny", p.reason
            agent.close_connection(conn.id, "decision_changed")
            return
        d = enforce.recheck(agent, conn)
        if d is not None and d.verdict == "deny":
            conn.verdict, conn.policy, conn.reason = "deny", d.policy, f"policy_changed: {d.reason}"
            agent.close_connection(conn.id, "policy_changed")
