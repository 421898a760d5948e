"""Transparent capture: install, check and remove the rules, enrol and un-enrol pods.

``Capture`` is the shell around the pure renderer (``rules``): it runs ``nft`` (or
iptables-restore) as one atomic transaction, updates the enrolled-pod sets element by
element, and sets up policy routing (``routing``). Every method takes the target
network namespace from the constructor (``None``: the current one), so the lab and
tests can act on a node namespace without entering it.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from agent.capture import rules


class CaptureError(RuntimeError):
    """A capture operation that could not be done; nothing was half-applied."""


@dataclass
class Drift:
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Capture:
    def __init__(self, capture, ports, pod_cidrs=(), netns: str | None = None) -> None:
        if capture.backend not in ("nftables", "iptables"):
            raise CaptureError(f"unknown capture backend {capture.backend!r}: use nftables or iptables")
        self.backend = capture.backend
        self.spec = rules.spec_from_config(capture, ports)
        self.netns = netns
        self.skip = set(capture.exclude_pods)
        self._enrolled: set[str] = set()
        # pods a predecessor enrolled, kept through install until this agent knows its own
        self._adopted: set[str] = set()

    # ---- running commands ---------------------------------------------------------
    def _run(self, argv: list[str], stdin: str | None = None) -> str:
        if shutil.which(argv[0]) is None:
            raise CaptureError(f"{argv[0]} not found: install the {'nftables' if argv[0] == 'nft' else 'iptables'} package")
        cmd = (["ip", "netns", "exec", self.netns] if self.netns else []) + argv
        r = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
        if r.returncode != 0:
            msg = (r.stderr.strip() or r.stdout.strip()).splitlines()
            hint = ""
            low = r.stderr.lower()
            if "not supported" in low or "no such file or directory" in low or "tproxy" in low:
                hint = " (does this kernel have TPROXY and socket matching? nft_tproxy, nft_socket / xt_TPROXY)"
            raise CaptureError(f"{' '.join(argv)}: {msg[0] if msg else 'failed'}{hint}")
        return r.stdout

    # ---- rules --------------------------------------------------------------------
    def render(self) -> str:
        if self.backend == "nftables":
            return rules.render_nft(self.spec, self._enrolled)
        return rules.render_iptables(self.spec, self._enrolled, 4) + rules.render_iptables(self.spec, self._enrolled, 6)

    def _routing(self, action: str) -> str:
        """Policy routing through ``agent.capture.routing`` (pyroute2), in a child process
        so the agent never holds pyroute2's memory."""
        r = subprocess.run([sys.executable, "-m", "agent.capture.routing", action, str(self.spec.route_table),
                            self.netns or ""], capture_output=True, text=True)
        if r.returncode != 0:
            raise CaptureError(f"policy routing ({action}): {r.stderr.strip() or 'failed'}")
        return r.stdout

    def install(self, adopt: bool = False) -> None:
        """Rules and policy routing, atomically; installing twice gives the same result.

        ``adopt``: keep the pods the rules in place enrol (a replacement agent taking over
        from a draining one), so their connections stay captured while this agent is
        still loading its own workloads; ``settle`` then drops the ones it does not know."""
        if adopt:
            live = self._live_enrolled() - self._enrolled
            self._adopted = live
            self._enrolled |= live
        if self.backend == "nftables":
            self._run(["nft", "-f", "-"], rules.nft_replace(self.spec, self._enrolled))  # one transaction
        else:
            # iptables-restore is atomic per family and table only: a failure part-way
            # (say ip6tables without xt_TPROXY) takes back what the earlier steps added
            try:
                self._iptables_install()
            except CaptureError:
                self._iptables_remove()
                raise
        try:
            self._routing("install")
        except CaptureError:
            self.remove()
            raise

    def remove(self) -> None:
        if self.backend == "nftables":
            self._run(["nft", "-f", "-"], rules.nft_remove())
        else:
            self._iptables_remove()
        self._routing("remove")

    def enrol(self, ips) -> None:
        new = [ip for ip in ips if ip not in self.skip and ip not in self._enrolled]
        if not new:
            return
        self._enrolled |= set(new)
        if self.backend == "nftables":
            self._run(["nft", "-f", "-"], rules.nft_elements("add", new))
        else:
            self._iptables_install()

    def unenrol(self, ips) -> None:
        gone = [ip for ip in ips if ip in self._enrolled]
        if not gone:
            return
        self._enrolled -= set(gone)
        if self.backend == "nftables":
            self._run(["nft", "-f", "-"], rules.nft_elements("delete", gone))
        else:
            self._iptables_install()

    def settle(self, local_ips) -> list[str]:
        """Un-enrol the adopted pods that are not among ``local_ips``; returns them."""
        keep = {_norm(ip) for ip in local_ips}
        gone = sorted(ip for ip in self._adopted if _norm(ip) not in keep)
        self._adopted = set()
        self.unenrol(gone)
        return gone

    def _live_enrolled(self) -> set[str]:
        """The pod addresses the installed rules enrol (empty when none are installed)."""
        try:
            if self.backend == "nftables":
                live = self._run(["nft", "list", "table", "inet", rules.TABLE])
                return {_norm(m) for m in _set_members(live, "pods4") | _set_members(live, "pods6")}
            out = set()
            for tool in ("iptables", "ip6tables"):
                for line in self._run([tool, "-t", "mangle", "-S", "HOSTMESH_PODS"]).splitlines():
                    parts = line.split()
                    if len(parts) >= 4 and parts[:3] == ["-A", "HOSTMESH_PODS", "-s"]:
                        out.add(_norm(parts[3].split("/")[0]))
            return out
        except CaptureError:
            return set()

    def enrolled(self) -> set[str]:
        return set(self._enrolled)

    def status(self) -> Drift:
        d = Drift()
        if self.backend == "nftables":
            try:
                live = self._run(["nft", "list", "table", "inet", rules.TABLE])
            except CaptureError:
                d.problems.append(f"nft table inet {rules.TABLE} is not installed (hostmesh capture install)")
                live = ""
            if live:
                want = rules.render_nft(self.spec, ())
                for chain in ("prerouting", "pod_out", "pod_in", "tunnel_fail"):
                    if f"chain {chain} " not in live:
                        d.problems.append(f"chain {chain} missing")
                live_rules, want_rules = _chain_rules(live), _chain_rules(want)
                for chain, rules_ in want_rules.items():
                    if len(live_rules.get(chain, [])) != len(rules_):
                        d.problems.append(f"chain {chain} has {len(live_rules.get(chain, []))} rules, "
                                          f"expected {len(rules_)}")
                members = {_norm(m) for m in _set_members(live, "pods4") | _set_members(live, "pods6")}
                if self._enrolled and members != {_norm(m) for m in self._enrolled}:
                    d.problems.append(f"enrolled pods differ: missing {sorted(self._enrolled - members)}, "
                                      f"extra {sorted(members - self._enrolled)}")
        d.problems += json.loads(self._routing("status") or "[]")
        return d

    # ---- iptables backend -----------------------------------------------------------
    def _iptables_install(self) -> None:
        for fam, tool in ((4, "iptables"), (6, "ip6tables")):
            self._run([f"{tool}-restore", "--noflush"], rules.render_iptables(self.spec, self._enrolled, fam))
            for table, chain, target in (("mangle", "PREROUTING", "HOSTMESH_PRE"), ("filter", "FORWARD", "HOSTMESH_FWD"),
                                         ("filter", "INPUT", "HOSTMESH_FWD")):
                try:
                    self._run([tool, "-t", table, "-C", chain, "-j", target])
                except CaptureError:
                    self._run([tool, "-t", table, "-I", chain, "1", "-j", target])

    def _iptables_remove(self) -> None:
        for tool in ("iptables", "ip6tables"):
            for table, chain, target in (("mangle", "PREROUTING", "HOSTMESH_PRE"), ("filter", "FORWARD", "HOSTMESH_FWD"),
                                         ("filter", "INPUT", "HOSTMESH_FWD")):
                while True:
                    try:
                        self._run([tool, "-t", table, "-D", chain, "-j", target])
                    except CaptureError:
                        break
            for table, chains in (("mangle", ["HOSTMESH_PRE", "HOSTMESH_PODS", "HOSTMESH_OUT", "HOSTMESH_IN",
                                              "HOSTMESH_FAIL"]), ("filter", ["HOSTMESH_FWD"])):
                for c in chains:
                    for op in ("-F", "-X"):
                        try:
                            self._run([tool, "-t", table, op, c])
                        except CaptureError:
                            pass


def _norm(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


def _chain_rules(text: str) -> dict[str, list[str]]:
    """Rule lines per chain of an nft listing (comments and the hook line left out)."""
    out: dict[str, list[str]] = {}
    chain = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("chain "):
            chain = s.split()[1]
            out[chain] = []
        elif s == "}":
            chain = None
        elif chain and s and not s.startswith(("#", "type ")):
            out[chain].append(s)
    return out


def _set_members(listing: str, name: str) -> set[str]:
    text = listing.split(f"set {name} {{", 1)
    if len(text) < 2:
        return set()
    body = text[1].split("}", 1)[0]
    if "elements = {" not in body + "}":
        return set()
    inner = (body + "}").split("elements = {", 1)[1].split("}", 1)[0]
    return {e.strip() for e in inner.replace("\n", " ").split(",") if e.strip()}
