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


def link_names(netns: str | None = None) -> set[str]:
    with _ipr(netns) as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def _host_route(msg) -> tuple[int, str] | None:
    """(oif, address) of a /32 or /128 route through one interface: how a pod is wired."""
    fam = msg.get("family")
    if msg.get("dst_len") != (32 if fam == socket.AF_INET else 128):
        return None
    dst, oif = msg.get_attr("RTA_DST"), msg.get_attr("RTA_OIF")
    if not dst or not oif or msg.get_attr("RTA_TABLE") not in (None, 254):  # main table only
        return None
    return oif, dst


def watch(netns: str | None = None, out=None) -> None:
    """Report pod addresses whose interface disappeared, one JSON line each, until EOF.

    A pod is wired as a host route (``<pod ip>/32 dev <veth>``). When the veth goes away
    the kernel flushes its routes without an RTM_DELROUTE for IPv4, so the watcher keeps
    its own map interface -> host addresses (a dump, then RTM_NEWROUTE/DELROUTE) and, on
    RTM_DELLINK, prints ``{"gone": [addresses], "ifname": name}``.
    """
    import json
    import sys

    from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE, RTMGRP_LINK

    out = out or sys.stdout
    by_oif: dict[int, set[str]] = {}
    names: dict[int, str] = {}
    with _ipr(netns) as ipr:
        ipr.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
        for link in ipr.get_links():
            names[link["index"]] = link.get_attr("IFLA_IFNAME")
        for fam in (socket.AF_INET, socket.AF_INET6):
            for r in ipr.get_routes(family=fam):
                hr = _host_route(r)
                if hr:
                    by_oif.setdefault(hr[0], set()).add(hr[1])
        out.write(json.dumps({"ready": True, "routes": sum(len(v) for v in by_oif.values())}) + "\n")
        out.flush()
        while True:
            for msg in ipr.get():
                ev = msg.get("event")
                if ev == "RTM_NEWLINK":
                    names[msg["index"]] = msg.get_attr("IFLA_IFNAME")
                elif ev == "RTM_NEWROUTE" and (hr := _host_route(msg)):
                    by_oif.setdefault(hr[0], set()).add(hr[1])
                elif ev == "RTM_DELROUTE" and (hr := _host_route(msg)):
                    by_oif.get(hr[0], set()).discard(hr[1])
                elif ev == "RTM_DELLINK":
                    gone = sorted(by_oif.pop(msg["index"], ()))
                    name = msg.get_attr("IFLA_IFNAME") or names.get(msg["index"], "")
                    names.pop(msg["index"], None)
                    if gone:
                        out.write(json.dumps({"gone": gone, "ifname": name}) + "\n")
                        out.flush()


def _die_with_parent() -> None:
    """The watcher must not outlive a SIGKILLed agent (it would linger in the netns)."""
    import ctypes
    import os
    import signal

    ppid = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != ppid:  # the parent died before prctl took effect
        raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """``python -m agent.capture.routing install|remove|status TABLE [NETNS]`` or ``watch [NETNS]``.

    The agent runs these in a short-lived child process: pyroute2 costs ~20 MiB of
    resident memory, which a long-running agent should not carry for two netlink calls.
    """
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "watch":
        _die_with_parent()
        try:
            watch(args[1] if len(args) > 1 and args[1] else None)
        except (BrokenPipeError, KeyboardInterrupt):
            pass
        return 0
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
