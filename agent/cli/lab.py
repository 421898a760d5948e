"""`hostmesh lab`: a virtual cluster of network namespaces on this machine (SPEC.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from agent.cli.main import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lab", help="a virtual cluster of network namespaces on this machine")
    ls = p.add_subparsers(dest="lab_cmd", metavar="SUBCOMMAND", required=True)

    def cmd(name: str, fn, help: str) -> argparse.ArgumentParser:
        c = ls.add_parser(name, help=help)
        c.add_argument("--name", default="lab", help="lab name (default: lab)")
        c.set_defaults(func=fn)
        return c

    c = cmd("up", cmd_up, "build a lab")
    c.add_argument("--nodes", type=int, default=2)
    c.add_argument("--pods-per-node", type=int, default=2)
    c.add_argument("--topology", type=Path)
    c.add_argument("--kafka", action="store_true", help="start a Kafka-compatible broker for the agents")
    c.add_argument("--otlp", action="store_true", help="start an OTLP receiver for the agents")
    c.add_argument("--prometheus", action="store_true", help="start a Prometheus scraping every agent")
    c.add_argument("--no-agent", action="store_true", help="namespaces and addresses only, no agents")
    c.add_argument("--capture-backend", choices=["nftables", "iptables"], default="nftables")
    c.add_argument("--capture-fail", choices=["closed", "open"], default="closed")
    c = cmd("down", cmd_down, "remove everything a lab made")
    c.add_argument("--all", action="store_true", help="every lab")
    c = cmd("status", cmd_status, "what a lab is made of")
    c.add_argument("--json", action="store_true")
    c = cmd("exec", cmd_exec, "run a command in a pod's namespace")
    c.add_argument("pod")
    c.add_argument("argv", nargs=argparse.REMAINDER)
    c = cmd("apply", cmd_apply, "apply policy documents on every node's agent")
    c.add_argument("file", type=Path)
    c = cmd("delete", cmd_delete, "remove policy documents from every node's agent")
    c.add_argument("file", type=Path)
    c = cmd("agent", cmd_agent, "stop (drain), start or kill one node's agent")
    c.add_argument("node")
    c.add_argument("action", choices=["stop", "start", "kill"])


def _root() -> None:
    if os.geteuid() != 0:
        raise CliError("hostmesh lab needs root (it creates network namespaces)")


def _errors():
    from agent.lab.cluster import LabError
    from agent.lab.model import TopologyError

    return (LabError, TopologyError)


def cmd_up(args) -> int:
    _root()
    from agent.lab import cluster
    from agent.lab.model import default_topology, parse_topology

    try:
        if args.topology:
            try:
                text = args.topology.read_text()
            except OSError as e:
                raise CliError(f"{args.topology}: {e.strerror}") from None
            topo = parse_topology(text, str(args.topology))
        else:
            topo = default_topology(args.nodes, args.pods_per_node)
        t0 = time.monotonic()
        st = cluster.up(args.name, topo, agents=not args.no_agent, kafka=args.kafka, otlp=args.otlp,
                        prometheus=args.prometheus,
                        capture={"backend": args.capture_backend, "fail": args.capture_fail},
                        progress=lambda s: print(s, flush=True))
    except _errors() as e:
        raise CliError(str(e)) from None
    _print_status(st)
    print(f"lab {args.name} up in {time.monotonic() - t0:.1f} s")
    return 0


def cmd_down(args) -> int:
    _root()
    from agent.lab import cluster

    names = cluster.labs() if args.all else [args.name]
    for name in names:
        try:
            left = cluster.down(name)
        except _errors() as e:
            raise CliError(str(e)) from None
        if left:
            raise CliError(f"lab {name}: could not remove {', '.join(left)}", 1)
        print(f"lab {name} removed")
    return 0


def cmd_status(args) -> int:
    from agent.lab import cluster

    try:
        st = cluster.status(args.name)
    except _errors() as e:
        raise CliError(str(e), 1) from None
    if args.json:
        print(json.dumps(st, indent=1))
    else:
        _print_status(st)
    return 0


def _print_status(st: dict) -> None:
    from agent.cli.table import render

    print(render(["node", "netns", "address", "agent pid", "admin socket"],
                 [[n["name"], n["netns"], n["address"], n["agent_pid"] or "-", n["admin_socket"]] for n in st["nodes"]]))
    print(render(["pod", "namespace", "node", "ip", "ip6", "identity"],
                 [[p["name"], p["namespace"], p["node"], p["ip"], p["ip6"], p["identity"]] for p in st["pods"]]))
    ext = st["external"]
    print(f"external host (outside the mesh): {ext['ip']} / {ext['ip6']} in {ext['netns']}")
    for svc in ("kafka", "otlp", "prometheus"):
        if st.get(svc):
            print(f"{svc}: {next(iter(st[svc].values()))}")


def cmd_exec(args) -> int:
    _root()
    from agent.lab import cluster

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise CliError("lab exec POD -- COMMAND...: no command given")
    try:
        lp, _ = cluster.lab_plan(args.name)
    except _errors() as e:
        raise CliError(str(e)) from None
    target = lp.pod(args.pod)
    ns = target.netns if target else next((n.netns for n in lp.nodes if n.name == args.pod), None)
    if args.pod == "external":
        ns = lp.ext
    if ns is None:
        raise CliError(f"lab {args.name} has no pod {args.pod!r}")
    sys.stdout.flush()
    os.execvp("ip", ["ip", "netns", "exec", ns, *argv])
    return 127


def _admin_all(name: str, fn) -> int:
    from agent.admin.client import AdminClient, AdminUnavailable
    from agent.lab import cluster

    st = cluster.status(name)
    failed = 0
    for n in st["nodes"]:
        try:
            code, body = fn(AdminClient(n["admin_socket"]))
        except AdminUnavailable as e:
            code, body = 0, {"error": {"message": str(e)}}
        if not 200 <= code < 300:
            failed += 1
            msg = body.get("error", {}).get("message", body) if isinstance(body, dict) else body
            print(f"{n['name']}: {msg}", file=sys.stderr)
        else:
            print(f"{n['name']}: ok")
    return 1 if failed else 0


def cmd_apply(args) -> int:
    try:
        text = args.file.read_text()
    except OSError as e:
        raise CliError(f"{args.file}: {e.strerror}") from None
    return _admin_all(args.name, lambda c: c.request("PUT", "/v1/policies", text.encode(), "application/yaml",
                                                     headers={"x-source": str(args.file)}))


def cmd_delete(args) -> int:
    from agent.rbac.loader import PolicyError, load_documents

    try:
        docs = load_documents(args.file.read_text(), str(args.file))
    except (OSError, PolicyError) as e:
        raise CliError(str(e)) from None

    def delete(c):
        for d in docs:
            code, body = c.request("DELETE", f"/v1/policies/{d.namespace}/{d.name}")
            if code not in (200, 404):
                return code, body
        return 200, {}

    return _admin_all(args.name, delete)


def cmd_agent(args) -> int:
    _root()
    from agent.lab import cluster

    try:
        r = cluster.agent(args.name, args.node, args.action)
    except _errors() as e:
        raise CliError(str(e)) from None
    print(f"{r['node']}: agent {'pid ' + str(r['agent_pid']) if r['agent_pid'] else 'stopped'}")
    return 0
