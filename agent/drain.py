"""Drain: when to stop accepting. Pure helpers plus one /proc read.

SPEC.md / issue: SIGTERM turns readiness to 503 and established connections get until
``drain.deadline_s``. New connections keep being accepted — closing the listeners at
once would leave a window in which the capture rules refuse pods' connections (fail
closed) — until a replacement agent listens on the same port (SO_REUSEPORT: the kernel
spreads new connections over both) or ``drain.accept_grace_s`` has passed.
"""

from __future__ import annotations


def listeners_on(proc_net_tcp: str, port: int) -> int:
    """Listening sockets on ``port`` in /proc/net/tcp(6) text (state 0A = LISTEN)."""
    n = 0
    for line in proc_net_tcp.splitlines()[1:]:
        parts = line.split()
        if len(parts) > 3 and parts[3] == "0A" and parts[1].rsplit(":", 1)[-1] == f"{port:04X}":
            n += 1
    return n


def replacement_present(proc_net_tcp: str, port: int, own: int) -> bool:
    return listeners_on(proc_net_tcp, port) > own


def read_proc_tcp() -> str:
    out = ""
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(f) as fh:
                out += fh.read()
        except OSError:
            pass
    return out
