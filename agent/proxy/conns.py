"""The table of live connections: what each one is, for /v1/connections, policy
re-checks and the finished-connection record. Plain data; no sockets, no clock
(callers pass times in).

One ``Conn`` per live connection, so its size is the agent's per-connection share
(docs/benchmarks.md, idle-10k): slotted (a 33-field instance ``__dict__`` was 1.3 KB),
addresses and principals interned (thousands of connections share a handful of pod addresses), no
container allocated until telemetry opens an account. Must never hold sockets, tasks or
closures: an idle connection costs only this record."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from dataclasses import InitVar, dataclass, field
from typing import Any

from agent.state.workloads import Workload

_ids = itertools.count(1)
_MASK64, _MASK128 = (1 << 64) - 1, (1 << 128) - 1
_PARENT = 1 << 192  # Conn.trace: its span id is the parent's


def next_id() -> int:
    return next(_ids)


@dataclass(slots=True)
class LiveConn:
    """A live connection as the engine lists it (``snapshot()``): bytes each way so far."""

    conn_id: int
    tag: str
    bytes_a_to_b: int
    bytes_b_to_a: int
    age_s: float


@dataclass(eq=False, slots=True)
class Conn:
    direction: str  # "outbound" | "inbound"
    mode: str  # "tunnel" | "local" | "passthrough" | "plaintext"
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    start: float  # wall clock, seconds
    start_mono: InitVar[float]  # accepted, not kept: nothing reads it (32 B per connection)
    src: Workload | None = None
    dst: Workload | None = None
    src_principal: str | None = None
    dst_principal: str | None = None
    verdict: str = "allow"
    policy: str | None = None
    reason: str = ""
    # W3C trace context, one int (``set_trace``; read as ``trace_id``, ``span_id``,
    # ``parent_span_id``): 56 B where the three hex strings were 150
    trace: int | None = None
    # True where this node made the authorization decision (destination side).
    enforced_here: bool = False
    cancel_scope: Any = None
    close_reason: str | None = None
    bytes_sent: int = 0  # towards the destination
    bytes_received: int = 0  # back to the source
    # traffic rules (agent.traffic): Envoy's response flags (UO, UF, URX, NR, UH) and the
    # cluster whose live-connection count this connection holds until it finishes
    response_flags: str | None = None
    cluster: str | None = None
    # telemetry: the service the client dialled ("ns/name", a VIP resolved at the source),
    # the open TcpAccount per reporting direction, and for connections relayed outside the
    # socket layer (the HTTP inspector) their live [to destination, back] byte counts
    service: str | None = None
    accounts: tuple = ()  # the TcpAccount per reporting direction (finish.directions) once opened
    live: list | None = None
    id: int = field(default_factory=next_id)
    core_id: int | None = None  # the native core's id while it carries the connection

    def __post_init__(self, start_mono: float) -> None:
        self.src_ip, self.dst_ip = sys.intern(self.src_ip), sys.intern(self.dst_ip)

    @property
    def in_engine(self) -> bool:
        """Carried by the native core (closed through it, not a cancel scope)."""
        return self.core_id is not None

    def set_trace(self, trace_id: str, span_id: str, parent: bool = False) -> None:
        """The trace id and a span id (lowercase hex, 32 and 16 digits). ``parent``: the
        span is the source's, the parent of this side's span (at the destination);
        otherwise it is this side's own span (the source's, sent as the traceparent's
        parent id)."""
        self.trace = int(trace_id + span_id, 16) | (_PARENT if parent else 0)

    @property
    def trace_id(self) -> str | None:
        t = self.trace
        return None if t is None else f"{(t >> 64) & _MASK128:032x}"

    @property
    def span_id(self) -> str | None:
        t = self.trace
        return None if t is None or t & _PARENT else f"{t & _MASK64:016x}"

    @property
    def parent_span_id(self) -> str | None:
        t = self.trace
        return None if t is None or not t & _PARENT else f"{t & _MASK64:016x}"

    def to_json(self, live: Any = None, now_mono: float | None = None) -> dict[str, Any]:
        sent, received = self.bytes_sent, self.bytes_received
        if live is not None:
            sent, received = live.bytes_a_to_b, live.bytes_b_to_a
        out = {
            "id": self.id,
            "direction": self.direction,
            "mode": self.mode,
            "src": _end(self.src_ip, self.src_port, self.src, self.src_principal),
            "dst": _end(self.dst_ip, self.dst_port, self.dst, self.dst_principal),
            "verdict": self.verdict,
            "policy": self.policy,
            "bytes_sent": sent,
            "bytes_received": received,
            "start": self.start,
        }
        if live is not None and getattr(live, "age_s", None) is not None:
            out["age_s"] = round(live.age_s, 3)
        return out


def _end(ip: str, port: int, w: Workload | None, principal: str | None) -> dict[str, Any]:
    return {
        "ip": ip,
        "port": port,
        "workload": w.name if w else None,
        "namespace": w.namespace if w else None,
        "principal": principal,
    }


class ConnTable:
    def __init__(self) -> None:
        self._conns: dict[int, Conn] = {}

    def __len__(self) -> int:
        return len(self._conns)

    def __iter__(self) -> Iterator[Conn]:
        return iter(list(self._conns.values()))

    def add(self, c: Conn) -> Conn:
        # principals are the same few strings for thousands of connections: share them
        if c.src_principal is not None:
            c.src_principal = sys.intern(c.src_principal)
        if c.dst_principal is not None:
            c.dst_principal = sys.intern(c.dst_principal)
        self._conns[c.id] = c
        return c

    def get(self, conn_id: int) -> Conn | None:
        return self._conns.get(conn_id)

    def pop(self, conn_id: int) -> Conn | None:
        return self._conns.pop(conn_id, None)

    def ids_for_ips(self, ips: set[str]) -> list[int]:
        return [c.id for c in self._conns.values() if c.src_ip in ips or c.dst_ip in ips]
