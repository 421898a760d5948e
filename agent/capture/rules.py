"""The capture rules, rendered from configuration. Pure: text out, nothing applied.

nftables (default): table ``inet hostmesh`` hooked at mangle priority in prerouting.
  1. packets of the agent's own transparent sockets (replies to connections it made
     with a pod's source address) are marked 0x1 and delivered locally;
  2. TCP from an enrolled pod goes to :15001, TCP from outside the node to an enrolled
     pod goes to :15006 (TPROXY, mark 0x1, policy routing table delivers locally),
     except to the pod's :15008 (HBONE): that goes to the agent's pod-address tunnel
     listener on 127.0.0.1/[::1]:15008, before any exclusion, and never to :15006;
  3. exclusions (destination ports, CIDRs) return before the TPROXY;
  4. fail closed: nft's ``tproxy`` does not match when nothing listens (NOTES.md), so a
     SYN that reaches the end of the chain is answered with a reset (``capture.fail:
     closed``); with ``open`` it is forwarded untouched.
Enrolled pods live in named sets updated element by element (``enrol``), so adding
pod 500 rewrites nothing else. The iptables backend renders the same decisions for
iptables-restore/ip6tables-restore (mangle table, one rule per enrolled pod in
dedicated chains). Templates: iptables/ at the repository top (the source of truth);
``agent/capture/templates`` is the installed copy.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from agent import AGENT_MARK, TPROXY_MARK

TABLE = "hostmesh"
TEMPLATES = Path(__file__).with_name("templates")


@dataclass(frozen=True)
class CaptureSpec:
    outbound_port: int
    inbound_port: int
    tunnel_port: int
    fail: str  # "closed" | "open"
    exclude_ports: tuple[int, ...] = ()
    exclude_cidrs: tuple[str, ...] = ()
    route_table: int = 100


def spec_from_config(capture, ports) -> CaptureSpec:
    return CaptureSpec(ports.outbound, ports.inbound_plain, ports.tunnel, capture.fail,
                       tuple(capture.exclude_ports), tuple(capture.exclude_cidrs), capture.route_table)


def split(ips) -> tuple[list[str], list[str]]:
    v4, v6 = [], []
    for ip in ips:
        (v6 if ipaddress.ip_address(ip).version == 6 else v4).append(str(ipaddress.ip_address(ip)))
    return sorted(v4), sorted(v6)


def _elements(items) -> str:
    return f"elements = {{ {', '.join(str(i) for i in items)} }}" if items else ""


def render_nft(spec: CaptureSpec, enrolled=()) -> str:
    pods4, pods6 = split(enrolled)
    cidr4 = [c for c in spec.exclude_cidrs if ipaddress.ip_network(c).version == 4]
    cidr6 = [c for c in spec.exclude_cidrs if ipaddress.ip_network(c).version == 6]
    fail = "tcp flags & (syn | ack) == syn reject with tcp reset" if spec.fail == "closed" else "# fail: open"
    text = (TEMPLATES / "nftables.nft.tmpl").read_text()
    return text.format(
        table=TABLE, agent_mark=hex(AGENT_MARK), mark=hex(TPROXY_MARK),
        pods4=_elements(pods4), pods6=_elements(pods6), skip_ports=_elements(sorted(spec.exclude_ports)),
        skip4=_elements(cidr4), skip6=_elements(cidr6),
        outbound=spec.outbound_port, inbound=spec.inbound_port, tunnel=spec.tunnel_port, fail_rule=fail,
    )


def nft_replace(spec: CaptureSpec, enrolled=()) -> str:
    """One transaction that replaces the table whether or not it exists (idempotent)."""
    return f"table inet {TABLE}\ndelete table inet {TABLE}\n" + render_nft(spec, enrolled)


def nft_remove() -> str:
    return f"table inet {TABLE}\ndelete table inet {TABLE}\n"


def nft_elements(op: str, ips) -> str:
    """``add``/``delete`` element commands for the enrolled-pod sets."""
    v4, v6 = split(ips)
    out = []
    if v4:
        out.append(f"{op} element inet {TABLE} pods4 {{ {', '.join(v4)} }}")
    if v6:
        out.append(f"{op} element inet {TABLE} pods6 {{ {', '.join(v6)} }}")
    return "\n".join(out) + ("\n" if out else "")


def render_iptables(spec: CaptureSpec, enrolled=(), family: int = 4) -> str:
    pods4, pods6 = split(enrolled)
    pods = pods4 if family == 4 else pods6
    loop = "127.0.0.1" if family == 4 else "::1"
    cidrs = [c for c in spec.exclude_cidrs if ipaddress.ip_network(c).version == family]
    out_rules, in_rules = [], []
    for ip in pods:
        out_rules.append(f"-A HOSTMESH_PODS -s {ip} -j HOSTMESH_OUT")
        in_rules.append(f"-A HOSTMESH_PODS -d {ip} -j HOSTMESH_IN")
    skips = [f"-A HOSTMESH_OUT -p tcp --dport {p} -j RETURN" for p in sorted(spec.exclude_ports)]
    skips += [f"-A HOSTMESH_OUT -d {c} -j RETURN" for c in cidrs]
    in_skips = [f"-A HOSTMESH_IN -p tcp --dport {p} -j RETURN" for p in sorted(spec.exclude_ports)]
    in_skips += [f"-A HOSTMESH_IN -s {c} -j RETURN" for c in cidrs]
    fail = ("-A HOSTMESH_FAIL -p tcp --syn -j MARK --set-mark 0x2" if spec.fail == "closed" else "")
    text = (TEMPLATES / "iptables.rules.tmpl").read_text()
    return text.format(
        agent_mark=hex(AGENT_MARK), mark=hex(TPROXY_MARK), loop=loop,
        outbound=spec.outbound_port, inbound=spec.inbound_port, tunnel=spec.tunnel_port,
        pods="\n".join(out_rules + in_rules), skips="\n".join(skips), in_skips="\n".join(in_skips),
        fail=fail, reject="tcp-reset",
    )
