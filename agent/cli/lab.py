"""`hostmesh lab`: a virtual cluster of network namespaces on this machine (SPEC.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from agent.cli.main import CliError

LAB_ENV = "HOSTMESH_LAB"  # the lab every `hostmesh lab` command means without --name


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lab", help="a virtual cluster of network namespaces on this machine")
    ls = p.add_subparsers(dest="lab_cmd", metavar="SUBCOMMAND", required=True)

    env = os.environ.get(LAB_ENV)

    def cmd(name: str, fn, help: str, default: str | None = "lab") -> argparse.ArgumentParser:
        c = ls.add_parser(name, help=help, description=help)
        c.add_argument("--name", default=env or default,
                       help=f"lab name (default: ${LAB_ENV}, else " + (f"{default})" if default else "list the labs)"))
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
    c.add_argument("--node-ca", action="store_true",
                   help="each node mints its SVIDs with a node intermediate instead of asking the lab's CA service")
    c.add_argument("--capture-backend", choices=["nftables", "iptables"], default="nftables")
    c.add_argument("--capture-fail", choices=["closed", "open"], default="closed")
    c = cmd("down", cmd_down, "remove everything a lab made")
    c.add_argument("--all", action="store_true", help="every lab")
    c = cmd("status", cmd_status, "what a lab is made of; without --name, which labs exist", default=None)
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
    c = cmd("ctl", cmd_ctl, "hostmesh ctl against one node's agent (its admin socket)")
    c.add_argument("node")
    c.add_argument("argv", nargs=argparse.REMAINDER, help="ctl's arguments: status, workloads, policies, ...")
    c = cmd("doctor", cmd_doctor, "hostmesh doctor inside one node (its rules, ports, agent and certificates)")
    c.add_argument("node")
    c.add_argument("--json", action="store_true")


def _split_name(args) -> list[str]:
    """``lab exec POD --name NAME -- CMD``: a --name after the positional (REMAINDER keeps it) is still the lab's."""
    argv = list(args.argv)
    while argv and (argv[0] == "--name" or argv[0].startswith("--name=")):
        if argv[0] == "--name":
            if len(argv) < 2:
                raise CliError("--name needs a lab name")
            args.name, argv = argv[1], argv[2:]
        else:
            args.name, argv = argv[0].split("=", 1)[1], argv[1:]
    return argv[1:] if argv[:1] == ["--"] else argv


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
                        progress=lambda s: print(s, flush=True), node_ca=args.node_ca)
    except _errors() as e:
        raise CliError(str(e)) from None
    _print_status(st)
    print(f"lab {args.name} up in {time.monotonic() - t0:.1f} s")
    return 0


def cmd_down(args) -> int:
    _root()
    from agent.lab import cluster

    names = cluster.labs() if args.all else [args.name]
    if args.all and not names:
        print("no labs to remove")
    for name in names:
        if not args.all and name not in cluster.labs() and not _leftovers(name):
            print(f"lab {name} does not exist; nothing to remove")
            continue
        try:
            left = cluster.down(name)
        except _errors() as e:
            raise CliError(str(e)) from None
        if left:
            raise CliError(f"lab {name}: could not remove {', '.join(left)}", 1)
        print(f"lab {name} removed")
    return 0


def _leftovers(name: str) -> bool:
    from agent.lab import netns

    try:
        return bool(netns.existing(f"hm-{name}-"))
    except Exception:  # noqa: BLE001 - not root, or no ip binary: down reports it
        return True


def cmd_status(args) -> int:
    from agent.lab import cluster

    if args.name is None:
        return _list_labs(args)
    try:
        st = cluster.status(args.name)
    except _errors() as e:
        raise CliError(str(e)) from None  # no such lab: a usage error (2)
    if args.json:
        print(json.dumps(st, indent=1))
    else:
        _print_status(st)
    return 0


def _list_labs(args) -> int:
    from agent.cli.table import render
    from agent.lab import cluster

    rows = []
    for name in cluster.labs():
        try:
            st = cluster.status(name)
        except _errors():
            continue
        rows.append({"name": name, "nodes": len(st["nodes"]), "pods": len(st["pods"]),
                     "agents": sum(1 for n in st["nodes"] if n["agent_pid"])})
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print("no labs (hostmesh lab up [--name NAME] builds one)")
    else:
        print(render(["lab", "nodes", "pods", "agents running"],
                     [[r["name"], r["nodes"], r["pods"], r["agents"]] for r in rows]))
        print("hostmesh lab status --name NAME shows one")
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
    if st.get("ca"):
        print(f"CA service: {st['ca']['address']} in {ext['netns']} (root {st['ca']['root']})")


def cmd_exec(args) -> int:
    _root()
    from agent.lab import cluster

    argv = _split_name(args)
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
    from agent.rbac.loader import load_documents
    from agent.traffic.loader import load_traffic

    try:
        text = args.file.read_text()
        docs = load_documents(text, str(args.file)) + [t.doc for t in load_traffic(text, str(args.file))]
    except (OSError, ValueError) as e:  # PolicyError, TrafficError
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
    if args.action == "start":
        print(f"{r['node']}: agent started, pid {r['agent_pid']}")
    elif r.get("was_running") is False:
        print(f"{r['node']}: no agent was running")
    else:
        print(f"{r['node']}: agent " + ("stopped (drained)" if args.action == "stop" else "killed (SIGKILL)"))
    return 0


def _node(args):
    from agent.lab import cluster

    try:
        st = cluster.status(args.name)
    except _errors() as e:
        raise CliError(str(e)) from None
    n = next((n for n in st["nodes"] if n["name"] == args.node), None)
    if n is None:
        raise CliError(f"lab {args.name} has no node {args.node!r} (nodes: {', '.join(m['name'] for m in st['nodes'])})")
    return n


def cmd_ctl(args) -> int:
    from agent.cli.main import main

    argv = _split_name(args)
    n = _node(args)
    return main(["ctl", "--socket", n["admin_socket"], *argv])


def cmd_doctor(args) -> int:
    from agent.cli.doctor import run_in_netns

    _root()
    n = _node(args)
    return run_in_netns(n["netns"], str(Path(n["admin_socket"]).parent / "config.yaml"), n["admin_socket"], args.json)
