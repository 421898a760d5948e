"""Drain: when to stop accepting. Pure helpers plus one /proc read.

SPEC.md / issue: SIGTERM turns readiness to 503 and established connections get until
``drain.deadline_s``. New connections keep being accepted — closing the listeners at
once would leave a window in which the capture rules refuse pods' connections (fail
closed) — until a replacement agent listens on the same port (SO_REUSEPORT: the kernel
spreads new connections over both) or ``drain.accept_grace_s`` has passed.

"A replacement" is a listener on every data-plane port that was not there when the
drain began (sockets are told apart by inode), so sibling worker processes of the
same agent, which listen on the same ports, are never mistaken for one. Connections
still queued on a listener when it closes are reset by the kernel unless
``net.ipv4.tcp_migrate_req`` is 1, which moves them to another listener of the
SO_REUSEPORT group; the agent sets it in its network namespace when it may.
"""

from __future__ import annotations


def listeners_on(proc_net_tcp: str, port: int) -> int:
    """Listening sockets on ``port`` in /proc/net/tcp(6) text."""
    return len(listening_inodes(proc_net_tcp, [port])[port])


def listening_inodes(proc_net_tcp: str, ports) -> dict[int, set[str]]:
    """Inodes of the listening sockets (state 0A) on each of ``ports``."""
    want = {f"{p:04X}": p for p in ports}
    out: dict[int, set[str]] = {p: set() for p in ports}
    for line in proc_net_tcp.splitlines():
        parts = line.split()
        if len(parts) > 9 and parts[3] == "0A":
            port = want.get(parts[1].rsplit(":", 1)[-1])
            if port is not None:
                out[port].add(parts[9])
    return out


def replacement_present(proc_net_tcp: str, before: dict[int, set[str]]) -> bool:
    """Every port of ``before`` (the listeners when the drain began) has a new one."""
    now = listening_inodes(proc_net_tcp, before)
    return all(now[p] - before[p] for p in before)


MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"


def enable_request_migration(path: str = MIGRATE_REQ) -> str | None:
    """Set ``tcp_migrate_req`` to 1 in this network namespace; None when it is (or now
    is) 1, else why it could not be."""
    try:
        with open(path) as f:
            if f.read().strip() == "1":
                return None
        with open(path, "w") as f:
            f.write("1\n")
        return None
    except OSError as e:
        return f"net.ipv4.tcp_migrate_req is 0 and could not be set ({e.strerror or e})"


def read_proc_tcp() -> str:
    out = ""
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(f) as fh:
                out += fh.read()
        except OSError:
            pass
    return out
