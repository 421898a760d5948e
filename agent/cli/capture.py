"""`hostmesh capture render|install|remove|status` (SPEC.md).

Exit codes (docs/cli.md): 0 ok, 1 the rules could not be installed or have drifted,
2 the command line or the configuration is wrong (nothing was changed).
"""

from __future__ import annotations

import argparse
import os
import sys

from agent.cli.main import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("capture", help="the transparent capture rules")
    p.add_argument("action", choices=["render", "install", "remove", "status"])
    p.add_argument("--backend", help="nftables (default) or iptables")
    p.add_argument("--config", help="agent configuration (capture and ports sections)")
    p.add_argument("--netns", help="act in this network namespace")
    p.add_argument("--pod", action="append", default=[], help="enrol this pod IP (repeatable)")
    p.set_defaults(func=cmd_capture)


def cmd_capture(args) -> int:
    from agent.capture import Capture, CaptureError
    from agent.config import ConfigError, load_config, parse_config

    try:
        cfg = load_config(args.config) if args.config else parse_config("{}")
    except ConfigError as e:
        raise CliError(str(e)) from None
    if args.netns and not os.path.exists(f"/run/netns/{args.netns}"):
        raise CliError(f"--netns {args.netns}: no such network namespace (ip netns list)")
    if args.backend:
        if args.backend not in ("nftables", "iptables"):
            raise CliError(f"unknown backend {args.backend!r}: use nftables or iptables")
        cfg.capture.backend = args.backend
    try:
        cap = Capture(cfg.capture, cfg.ports, cfg.cluster.pod_cidrs, netns=args.netns)
        local = [w for w in cfg.workloads if not w.node]
        cap._enrolled = set(args.pod) | {ip for w in local for ip in [w.ip, *w.ips]}
        pods = len(local) + len(set(args.pod) - {ip for w in local for ip in [w.ip, *w.ips]})
        if args.action == "render":
            sys.stdout.write(cap.render())
        elif args.action == "install":
            cap.install()
            print(f"capture installed ({cap.backend}, {pods} pod(s) enrolled, "
                  f"{len(cap.enrolled())} address(es))")
        elif args.action == "remove":
            cap.remove()
            print("capture removed")
        else:
            drift = cap.status()
            if drift.ok:
                print("capture: installed and as expected")
                return 0
            for p in drift.problems:
                print(f"drift: {p}")
            return 1
    except CaptureError as e:
        raise CliError(str(e), 1) from None
    return 0
