"""`hostmesh doctor`: checks this host for what the agent needs, and says what to fix.

Each check gathers facts and returns ``(status, what, fix)`` with status OK, WARN or
FAIL; exit codes (docs/cli.md): 0 nothing FAILs, 1 a check FAILs, 2 the configuration is
invalid. ``--netns NS`` runs every check inside a network namespace (a lab node:
``hostmesh lab doctor NODE``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import uuid


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check kernel features, rules, certificates, ports and sinks")
    p.add_argument("--config", help="the agent's configuration")
    p.add_argument("--socket", help="admin socket (default: from the config)")
    p.add_argument("--netns", help="check inside this network namespace (as `ip netns exec NS hostmesh doctor`)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)


# One statement per line, each block closed on its own line: nft 1.0.6 refuses a `}`
# right after a statement ("syntax error, unexpected '}'"), later versions accept both.
PROBE_RULES = """\
table inet probe {
  chain p {
    type filter hook prerouting priority mangle;
    meta l4proto tcp socket transparent 1 accept
    meta nfproto ipv4 meta l4proto tcp tproxy ip to 127.0.0.1:1 accept
  }
}
"""


def _scratch_tproxy(rules: str = PROBE_RULES) -> tuple[str, str, str]:
    """Try a tproxy + socket rule in a throwaway namespace (the host is never touched)."""
    if shutil.which("nft") is None:
        return "FAIL", "nft binary not found", "apt-get install nftables"
    ns = f"hm-doctor-{uuid.uuid4().hex[:6]}"
    try:
        if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
            return "WARN", "cannot create a network namespace to probe TPROXY (not root?)", "run as root"
        r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, capture_output=True, text=True)
        if r.returncode != 0:
            first = next((line for line in r.stderr.splitlines() if "Error" in line), r.stderr.strip())
            return "FAIL", f"kernel refuses nft tproxy/socket rules: {first[:200]}", \
                "load nft_tproxy, nft_socket (modprobe) or use a kernel with CONFIG_NFT_TPROXY"
        return "OK", "nftables with tproxy and socket matching", ""
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _port_bound(port: int) -> bool:
    with open("/proc/net/tcp") as f4:
        text = f4.read()
    try:
        with open("/proc/net/tcp6") as f6:
            text += f6.read()
    except OSError:
        pass
    return f":{port:04X} " in text and " 0A " in text


def checks(cfg, sock_path: str) -> list[tuple[str, str, str]]:
    out = [_scratch_tproxy()]
    out.append(("OK", "iptables present", "") if shutil.which("iptables-restore")
               else ("WARN", "iptables-restore not found (only needed for capture.backend: iptables)",
                     "apt-get install iptables"))
    try:
        disabled = open("/proc/sys/kernel/io_uring_disabled").read().strip()
        out.append(("OK" if disabled == "0" else "WARN", f"io_uring_disabled={disabled} (optional)", ""))
    except OSError:
        out.append(("WARN", "io_uring status unknown (optional)", ""))
    try:
        migrate = open("/proc/sys/net/ipv4/tcp_migrate_req").read().strip()
        out.append(("OK", "tcp_migrate_req=1 (queued connections survive a hand-over)", "") if migrate == "1"
                   else ("WARN", f"tcp_migrate_req={migrate}: a replacement agent's hand-over may reset "
                                 "a few queued connections", "sysctl -w net.ipv4.tcp_migrate_req=1"))
    except OSError:
        out.append(("WARN", "tcp_migrate_req unknown (kernel older than 5.14?)", ""))
    if cfg.capture.enabled:
        try:
            from agent.capture import Capture

            drift = Capture(cfg.capture, cfg.ports, cfg.cluster.pod_cidrs).status()
            if drift.ok:
                out.append(("OK", "capture rules and policy routing installed", ""))
            for p in drift.problems:
                out.append(("FAIL", f"capture: {p}", "hostmesh capture install --config FILE (or restart the agent)"))
        except Exception as e:  # noqa: BLE001 - a doctor reports, it does not crash
            out.append(("FAIL", f"capture: {e}", "hostmesh capture install"))
    for port in (cfg.ports.outbound, cfg.ports.inbound_plain, cfg.ports.tunnel, cfg.ports.metrics, cfg.ports.readiness):
        out.append(("OK", f"port {port} listening", "") if _port_bound(port)
                   else ("FAIL", f"port {port} not listening", "start the agent: hostmesh run --config FILE"))
    if os.path.exists(sock_path):
        st = os.stat(sock_path)
        mode = stat.S_IMODE(st.st_mode)
        ok = mode in (0o600, 0o660) and st.st_uid == 0
        out.append(("OK" if ok else "FAIL", f"admin socket {sock_path} mode {mode:o} owner {st.st_uid}",
                    "" if ok else f"chmod 600 {sock_path}; restart the agent"))
        try:
            from agent.admin.client import AdminClient

            _code, st = AdminClient(sock_path, timeout=3).request("GET", "/v1/status")
            for p in (st or {}).get("problems") or []:  # a rejected policy source: not ready
                out.append(("FAIL", f"policy source rejected, node not ready: {p['error']}",
                            f"fix {p['source']}, then hostmesh ctl reload"))
            code, certs = AdminClient(sock_path, timeout=3).request("GET", "/v1/certs")
            for c in certs or []:
                left = c.get("expires_in_s") or 0
                status = "OK" if c["state"] == "available" and left > 3600 else "FAIL"
                out.append((status, f"certificate {c['identity']}: {c['state']}, expires in {left // 3600} h",
                            "" if status == "OK" else "check identity.ca_cert/ca_key; hostmesh ctl certs"))
        except Exception as e:  # noqa: BLE001
            out.append(("FAIL", f"admin API: {e}", "is the agent running?"))
    else:
        out.append(("FAIL", f"admin socket {sock_path} missing", "start the agent"))
    out.append(_signing_key(cfg.identity))
    for name, sink in (("kafka", cfg.telemetry.kafka), ("otlp", cfg.telemetry.otlp)):
        if sink is None:
            continue
        target = sink.bootstrap.split(",")[0] if name == "kafka" else sink.endpoint.split("://")[-1]
        host, _, port = target.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), 2).close()
            out.append(("OK", f"{name} reachable at {target}", ""))
        except (OSError, ValueError) as e:
            out.append(("WARN", f"{name} at {target} unreachable: {e}", "check telemetry settings; traffic is unaffected"))
    return out


def _signing_key(ident) -> tuple[str, str, str]:
    """A node with a signing key can mint an SVID for any identity of the mesh."""
    if ident.ca_key:
        return ("WARN", f"this node holds a signing key ({ident.ca_key}): stolen, it mints SVIDs for every identity",
                "run `hostmesh ca serve` and set identity.ca_address (docs/identity.md, \"The CA service\")")
    if ident.ca_address:
        return ("OK", f"no signing key on this node; SVIDs from the CA service at {ident.ca_address}", "")
    return ("OK", "no signing key on this node", "")


def cmd_doctor(args) -> int:
    from agent.config import ConfigError, load_config, parse_config

    try:
        cfg = load_config(args.config) if args.config else parse_config("{}")
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    if args.netns:
        return run_in_netns(args.netns, args.config, args.socket, args.json)
    results = checks(cfg, args.socket or cfg.admin.socket)
    if args.json:
        print(json.dumps([{"status": s, "check": w, "fix": f} for s, w, f in results], indent=1))
    else:
        for s, w, f in results:
            print(f"[{s:4}] {w}" + (f"\n       fix: {f}" if f else ""))
    return 1 if any(s == "FAIL" for s, _, _ in results) else 0


def run_in_netns(netns: str, config: str | None, sock: str | None, as_json: bool) -> int:
    """The same checks from inside ``netns`` (its ports, rules, sockets, sinks)."""
    if not os.path.exists(f"/run/netns/{netns}"):
        print(f"hostmesh doctor: no network namespace {netns!r} (ip netns list)", file=sys.stderr)
        return 2
    argv = [sys.executable, "-m", "agent", "doctor"]
    argv += ["--config", config] if config else []
    argv += ["--socket", sock] if sock else []
    argv += ["--json"] if as_json else []
    sys.stdout.flush()
    return subprocess.run(["ip", "netns", "exec", netns, *argv]).returncode
