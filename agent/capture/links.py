"""Pod interfaces that vanish: un-register their workloads (capture, identity, state).

A pod is wired as a host route (``<pod ip>/32 dev <veth>``, ``/128`` for IPv6). When
the CNI deletes the pod's interface the kernel flushes those routes — for IPv4 without
telling anyone — so the watcher keeps its own map interface -> host addresses and, when
an interface is gone, removes every local workload that owned one of its addresses,
exactly as ``DELETE /v1/workloads`` would: its nft set elements, its connections and,
with its last pod, its identity.

In the agent's process and thread, at almost no memory: a netlink socket subscribed to
link and route changes (the stdlib's ``AF_NETLINK``; the messages are only a wake-up,
never parsed) makes trio rescan ``/proc/net/route``, ``/proc/net/ipv6_route`` and the
interface list — a few small text files — at once; a rescan every
``RESCAN_S`` covers a lost notification. (A pyroute2 child process did this before:
33 MiB of resident memory per agent for the same answer, docs/benchmarks.md.)
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct

import trio

logger = logging.getLogger("hostmesh.capture")

NETLINK_ROUTE = 0
RTMGRP_LINK, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE = 0x1, 0x40, 0x400
RESCAN_S = 5.0


# ---- pure ------------------------------------------------------------------------------


def parse_routes(route4: str, route6: str) -> dict[str, set[str]]:
    """Interface -> the host addresses routed through it, from /proc/net/route and
    /proc/net/ipv6_route (main-table view of the reading process's namespace)."""
    out: dict[str, set[str]] = {}
    for line in route4.splitlines()[1:]:
        f = line.split()
        if len(f) < 8 or f[7] != "FFFFFFFF" or f[0] == "lo":
            continue
        try:
            ip = socket.inet_ntoa(struct.pack("<I", int(f[1], 16)))
        except (ValueError, struct.error):
            continue
        out.setdefault(f[0], set()).add(ip)
    for line in route6.splitlines():
        f = line.split()
        if len(f) < 10 or f[1] != "80" or f[9] == "lo":
            continue
        try:
            ip = str(ipaddress.IPv6Address(bytes.fromhex(f[0])))
        except ValueError:
            continue
        out.setdefault(f[9], set()).add(ip)
    return out


def vanished(before: dict[str, set[str]], now: dict[str, set[str]], interfaces: set[str]) -> dict[str, set[str]]:
    """Interfaces of ``before`` that no longer exist -> their addresses not routed
    elsewhere now (a pod moved to a new interface keeps its workload)."""
    still = set().union(*now.values()) if now else set()
    out = {}
    for name, addrs in before.items():
        if name not in interfaces:
            gone = addrs - still
            if gone:
                out[name] = gone
    return out


def gone_workloads(registry, addresses) -> list[str]:
    """UIDs of local workloads that own any of ``addresses`` (pure)."""
    uids = []
    for ip in sorted(addresses):
        w = registry.by_ip(ip)
        if w is not None and w.node is None and w.uid not in uids:
            uids.append(w.uid)
    return uids


# ---- the trio shell ----------------------------------------------------------------------


def _scan() -> tuple[dict[str, set[str]], set[str]]:
    def read(path: str) -> str:
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            return ""

    return parse_routes(read("/proc/net/route"), read("/proc/net/ipv6_route")), {n for _, n in socket.if_nameindex()}


def _subscribe() -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    s.bind((0, RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))
    return s


def _drain(s: socket.socket) -> None:
    while True:
        try:
            s.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno == errno.ENOBUFS:  # notifications overflowed: the rescan covers it
                continue
            raise


async def watch_links(agent, task_status=trio.TASK_STATUS_IGNORED) -> None:
    try:
        sock = _subscribe()
    except OSError as e:
        logger.warning("link watcher unavailable (%s): vanished pod interfaces are only removed by the API",
                       e.strerror or e)
        task_status.started()
        return
    with sock:
        routes, _ = _scan()
        task_status.started()
        while True:
            with trio.move_on_after(RESCAN_S):
                await trio.lowlevel.wait_readable(sock)
            _drain(sock)
            now, interfaces = _scan()
            for name, addrs in vanished(routes, now, interfaces).items():
                _remove(agent, name, addrs)
            routes = now


def _remove(agent, ifname: str, addresses: set[str]) -> None:
    for uid in gone_workloads(agent.registry, addresses):
        w = agent.unregister(uid)
        agent.count("workloads_removed_link_gone")
        logger.warning("pod interface %s disappeared: workload %s/%s (%s) removed",
                       ifname, w.namespace if w else "?", w.name if w else "?", uid)
