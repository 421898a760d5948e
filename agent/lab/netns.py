"""Building and removing a lab's namespaces with iproute2 (`ip -batch`), nothing else.

Everything is created inside namespaces named ``hm-<lab>-*``; the machine's own
namespace is never touched (no link, route, rule or nft change there), so deleting the
namespaces — after killing what runs in them — removes every trace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from agent.lab.model import LabPlan

_SYSCTL_NODE = {
    "net/ipv4/ip_forward": "1",
    "net/ipv6/conf/all/forwarding": "1",
    "net/ipv4/conf/all/rp_filter": "0",
    "net/ipv4/conf/default/rp_filter": "0",
    "net/ipv6/conf/all/accept_dad": "0",
    "net/ipv6/conf/default/accept_dad": "0",
    "net/ipv4/conf/all/route_localnet": "1",
}
_SYSCTL_HOST = {"net/ipv6/conf/all/accept_dad": "0", "net/ipv6/conf/default/accept_dad": "0"}


class LabError(RuntimeError):
    pass


def _ip(args: list[str], batch: list[str] | None = None) -> None:
    cmd = ["ip", *args] + (["-batch", "-"] if batch is not None else [])
    r = subprocess.run(cmd, input="\n".join(batch or []) + "\n", capture_output=True, text=True)
    if r.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'failed'}")


def _sysctls(netns: list[str], values: dict[str, str]) -> None:
    script = "; ".join(f"echo {v} > /proc/sys/{k}" for k, v in values.items())
    procs = [subprocess.Popen(["ip", "netns", "exec", ns, "sh", "-c", script]) for ns in netns]
    for p in procs:
        if p.wait() != 0:
            raise LabError("setting sysctls in the lab namespaces failed")


def existing(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.split() and ln.split()[0].startswith(prefix)]


def build(lp: LabPlan) -> None:
    _ip([], [f"netns add {ns}" for ns in lp.netns])
    all_ns = lp.netns
    _sysctls(all_ns, _SYSCTL_HOST)
    _sysctls([n.netns for n in lp.nodes], _SYSCTL_NODE)
    # underlay: a bridge; every node and the external host hang off it
    u = ["link add br0 type bridge", "link set br0 up", "link set lo up"]
    for n in lp.nodes:
        u += [f"link add u{n.index} type veth peer name eth0 netns {n.netns}", f"link set u{n.index} master br0",
              f"link set u{n.index} up"]
    u += [f"link add ux type veth peer name eth0 netns {lp.ext}", "link set ux master br0", "link set ux up"]
    _ip(["-n", lp.underlay], u)
    # nodes
    for n in lp.nodes:
        cmds = ["link set lo up", "link set eth0 up", f"addr add {n.ip4}/24 dev eth0",
                f"addr add {n.ip6}/64 dev eth0 nodad"]
        for m in lp.nodes:
            if m is not n:
                cmds += [f"route add {m.cidr4} via {m.ip4}", f"route add {m.cidr6} via {m.ip6}"]
        for p in [p for p in lp.pods if p.node == n.index]:
            cmds += [f"link add {p.veth} type veth peer name eth0 netns {p.netns}", f"link set {p.veth} up",
                     f"addr add 169.254.1.1/32 dev {p.veth}", f"addr add fe80::1/64 dev {p.veth} nodad",
                     f"route add {p.ip4}/32 dev {p.veth}", f"route add {p.ip6}/128 dev {p.veth}"]
        _ip(["-n", n.netns], cmds)
    # pods: a /32 and a /128, default routes through the node
    for p in lp.pods:
        _ip(["-n", p.netns], [
            "link set lo up", "link set eth0 up", f"addr add {p.ip4}/32 dev eth0",
            f"addr add {p.ip6}/128 dev eth0 nodad", "route add 169.254.1.1/32 dev eth0 scope link",
            "route add default via 169.254.1.1 dev eth0", "route add default via fe80::1 dev eth0",
        ])
    ext = ["link set lo up", "link set eth0 up", f"addr add {lp.ext_ip4}/24 dev eth0",
           f"addr add {lp.ext_ip6}/64 dev eth0 nodad"]
    for n in lp.nodes:
        ext += [f"route add {n.cidr4} via {n.ip4}", f"route add {n.cidr6} via {n.ip6}"]
    _ip(["-n", lp.ext], ext)


def kill_all(netns: list[str], sig: int = signal.SIGKILL) -> None:
    for ns in netns:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        for pid in out.split():
            try:
                os.kill(int(pid), sig)
            except (ProcessLookupError, ValueError):
                pass


def destroy(netns: list[str]) -> list[str]:
    """Kill what runs in ``netns`` and delete them; returns the ones that would not go."""
    present = set(existing("hm-"))
    targets = [ns for ns in netns if ns in present]
    kill_all(targets)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not any(subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.strip()
                   for ns in targets):
            break
        time.sleep(0.05)
    if targets:
        subprocess.run(["ip", "-force", "-batch", "-"], input="\n".join(f"netns del {ns}" for ns in targets) + "\n",
                       capture_output=True, text=True)
    left = set(existing("hm-"))
    return [ns for ns in targets if ns in left]
