"""Policy routing for TPROXY, through netlink — the one module that imports pyroute2.

A rule ``fwmark 0x1 lookup <table>`` and a ``local default dev lo`` route in that table,
for IPv4 and IPv6: packets the capture rules marked are delivered to the agent's
transparent listeners instead of being forwarded. Created and removed idempotently.
Also a link watcher so a pod interface that disappears gets its enrolment cleaned up.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager

from pyroute2 import IPRoute, NetNS

from agent import TPROXY_MARK


@contextmanager
def _ipr(netns: str | None):
    ipr = NetNS(netns) if netns else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _families():
    return (socket.AF_INET, "0.0.0.0/0"), (socket.AF_INET6, "::/0")


def install(table: int, netns: str | None = None) -> None:
    with _ipr(netns) as ipr:
        for fam, dst in _families():
            if not _has_rule(ipr, fam, table):
                ipr.rule("add", family=fam, fwmark=TPROXY_MARK, table=table, priority=100)
            try:
                ipr.route("replace", family=fam, dst=dst, type="local", table=table, scope=254,
                          oif=ipr.link_lookup(ifname="lo")[0])
            except Exception as e:  # noqa: BLE001 - report which family failed
                raise OSError(f"local route in table {table} ({'v6' if fam == socket.AF_INET6 else 'v4'}): {e}") from None


def remove(table: int, netns: str | None = None) -> None:
    with _ipr(netns) as ipr:
        for fam, dst in _families():
            while _has_rule(ipr, fam, table):
                ipr.rule("del", family=fam, fwmark=TPROXY_MARK, table=table, priority=100)
            try:
                ipr.route("del", family=fam, dst=dst, type="local", table=table, scope=254,
                          oif=ipr.link_lookup(ifname="lo")[0])
            except Exception:  # noqa: BLE001 - already gone
                pass


def _has_rule(ipr, fam: int, table: int) -> bool:
    for r in ipr.get_rules(family=fam):
        if r.get_attr("FRA_FWMARK") == TPROXY_MARK and r.get_attr("FRA_TABLE") == table:
            return True
    return False


def status(table: int, netns: str | None = None) -> list[str]:
    """What is missing, in words (empty: all present)."""
    problems = []
    with _ipr(netns) as ipr:
        for fam, _ in _families():
            name = "v6" if fam == socket.AF_INET6 else "v4"
            if not _has_rule(ipr, fam, table):
                problems.append(f"ip rule fwmark {TPROXY_MARK:#x} lookup {table} ({name}) missing")
            if not [r for r in ipr.get_routes(family=fam, table=table) if r["type"] == 2]:  # RTN_LOCAL
                problems.append(f"local default route in table {table} ({name}) missing")
    return problems


def main(argv: list[str] | None = None) -> int:
    """``python -m agent.capture.routing install|remove|status TABLE [NETNS]``.

    The agent runs these in a short-lived child process: pyroute2 costs ~20 MiB of
    resident memory, which a long-running agent should not carry for two netlink calls.
    """
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    action, table = args[0], int(args[1])
    netns = args[2] if len(args) > 2 and args[2] else None
    try:
        if action == "install":
            install(table, netns)
        elif action == "remove":
            remove(table, netns)
        else:
            print(json.dumps(status(table, netns)))
    except OSError as e:
        print(str(e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
