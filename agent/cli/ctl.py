"""`hostmesh ctl`: the admin API for people (tables) and scripts (``--json``).

Decides what to ask the agent and how to show the answer (agent/cli/ctl_views.py);
never prints a traceback: every failure is one ``hostmesh ctl: ...`` line. Exit codes
(docs/cli.md): 0 ok, 1 the agent refused the request or is unreachable, 2 the command
line or a file it names is wrong (nothing was sent).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from agent.cli import ctl_views as views

DEFAULT_SOCKET = "/run/hostmesh/admin.sock"
SOCKET_ENV = "HOSTMESH_ADMIN_SOCKET"  # also honoured by hostmesh-register

COMMANDS = {
    "status": "node, version, uptime, readiness, counts",
    "certs": "the workload certificates (SVIDs): state, issuer, expiry",
    "stats": "counters, gauges, telemetry, socket layer and tunnels, by section",
    "reload": "re-read the configuration, policy directory and CA material (as SIGHUP)",
    "drain": "readiness 503, stop accepting, drain until the deadline (as SIGTERM)",
    "config-dump": "everything in one JSON document",
}


def default_socket() -> str:
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ctl", help="talk to a running agent through its admin socket",
                       description="Talk to a running agent through its admin socket. "
                                   "Exit codes: 0 ok, 1 the agent refused or is unreachable, 2 usage error.")
    add_arguments(p)
    p.set_defaults(func=cmd_ctl)


def add_arguments(p: argparse.ArgumentParser, socket_option: bool = True) -> None:
    if socket_option:
        p.add_argument("--socket", default=None,
                       help=f"the agent's admin socket (default: ${SOCKET_ENV}, else {DEFAULT_SOCKET})")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    cs = p.add_subparsers(dest="ctl_cmd", metavar="COMMAND", required=True)

    def sub_cmd(name: str, help: str) -> argparse.ArgumentParser:
        c = cs.add_parser(name, help=help, description=help)
        c.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts")
        return c

    for name, help in COMMANDS.items():
        sub_cmd(name, help)
    w = sub_cmd("workloads", "list the workloads; add or remove one")
    ws = w.add_subparsers(dest="action", metavar="ACTION")
    a = ws.add_parser("add", help="register a workload (--uid, --name, --ip; or --file BODY.json)")
    a.add_argument("--file", type=Path, help="a JSON body (docs/admin.md POST /v1/workloads)")
    a.add_argument("--uid")
    a.add_argument("--name")
    a.add_argument("--namespace", default="default")
    a.add_argument("--service-account", default="default")
    a.add_argument("--ip")
    a.add_argument("--label", action="append", default=[], help="KEY=VALUE (repeatable)")
    a.add_argument("--http-port", action="append", type=int, default=[], help="a port speaking HTTP/1.1 (repeatable)")
    r = ws.add_parser("remove", help="unregister a workload")
    r.add_argument("uid")
    pol = sub_cmd("policies", "list the policies in force; apply or delete")
    ps = pol.add_subparsers(dest="action", metavar="ACTION")
    pa = ps.add_parser("apply", help="apply a YAML/JSON file of AuthorizationPolicy/PeerAuthentication documents")
    pa.add_argument("file", type=Path)
    pa.add_argument("--prune", action="store_true",
                    help="also delete the policies an earlier apply of this file made that it no longer holds")
    pd = ps.add_parser("delete", help="delete one policy")
    pd.add_argument("ref", metavar="NAMESPACE/NAME")
    sub_cmd("traffic", "DestinationRules/VirtualServices in force and ejected endpoints")
    con = sub_cmd("connections", "live connections")
    con.add_argument("--watch", action="store_true", help="refresh every second (Ctrl-C stops)")
    lg = cs.add_parser("logging", help="set the agent's log level")
    lg.add_argument("level", choices=["debug", "info", "warning", "error"])


class _Failed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _usage(message: str) -> _Failed:
    return _Failed(2, message)


def _call(args, method: str, path: str, body=None, ctype=None, headers=None):
    from agent.admin.client import AdminClient, AdminUnavailable

    try:
        status, data = AdminClient(args.socket).request(method, path, body, ctype, headers=headers)
    except AdminUnavailable as e:
        raise _Failed(1, str(e)) from None
    if not 200 <= status < 300:
        msg = data.get("error", {}).get("message") if isinstance(data, dict) else data
        raise _Failed(1, f"{status}: {msg}")
    return data


def cmd_ctl(args) -> int:
    args.socket = args.socket or default_socket()
    try:
        return _dispatch(args)
    except _Failed as e:
        print(f"hostmesh ctl: {e}", file=sys.stderr)
        return e.code


def _out(args, data, table=None) -> int:
    if args.json or table is None:
        print(json.dumps(data, indent=1, default=str))
    else:
        print(table(data))
    return 0


def _read(path: Path) -> str:
    from agent.files import FileProblem, read_text

    try:
        return read_text(path)
    except FileProblem as e:
        raise _usage(str(e)) from None


def workload_body(args) -> dict:
    """The POST /v1/workloads body from ``--file`` or the flags; usage errors before anything is sent."""
    if args.file:
        text = _read(args.file)
        try:
            return json.loads(text)
        except ValueError as e:
            raise _usage(f"{args.file}: not JSON: {e}") from None
    missing = [f"--{f.replace('_', '-')}" for f in ("uid", "name", "ip") if not getattr(args, f)]
    if missing:
        raise _usage(f"workloads add: missing {', '.join(missing)} (or give --file BODY.json)")
    labels = {}
    for kv in args.label:
        k, eq, v = kv.partition("=")
        if not eq or not k:
            raise _usage(f"--label {kv!r}: use KEY=VALUE")
        labels[k] = v
    return {"uid": args.uid, "name": args.name, "namespace": args.namespace,
            "service_account": args.service_account, "ip": args.ip, "labels": labels,
            "http_ports": args.http_port}


def _policies(args) -> int:
    if args.action == "apply":
        text = _read(args.file)
        source = str(args.file.absolute())
        applied = _call(args, "PUT", "/v1/policies", text.encode(), "application/yaml", {"x-source": source})
        pruned = []
        if args.prune:
            keep = set(applied["applied"])
            for p in _call(args, "GET", "/v1/policies"):
                ref = f"{p['namespace']}/{p['name']}"
                if p["source"] == source and ref not in keep:
                    _call(args, "DELETE", f"/v1/policies/{ref}")
                    pruned.append(ref)
            applied = {**applied, "pruned": pruned}
        return _out(args, applied, lambda d: f"applied {', '.join(d['applied'])}"
                    + (f"\npruned {', '.join(pruned)}" if pruned else ""))
    if args.action == "delete":
        ns, _, name = args.ref.partition("/")
        if not ns or not name or "/" in name:
            raise _usage(f"policies delete {args.ref!r}: give NAMESPACE/NAME (hostmesh ctl policies lists them)")
        return _out(args, _call(args, "DELETE", f"/v1/policies/{ns}/{name}"), lambda d: f"deleted {d['deleted']}")
    return _out(args, _call(args, "GET", "/v1/policies"), views.policies)


def _dispatch(args) -> int:
    c = args.ctl_cmd
    if c == "status":
        return _out(args, _call(args, "GET", "/v1/status"), views.status)
    if c == "certs":
        return _out(args, _call(args, "GET", "/v1/certs"), views.certs)
    if c == "stats":
        return _out(args, _call(args, "GET", "/v1/stats"), views.stats)
    if c in ("reload", "drain"):
        return _out(args, _call(args, "POST", f"/v1/{c}"), lambda d: views.action(c, d))
    if c == "config-dump":
        return _out(args, _call(args, "GET", "/v1/config_dump"))
    if c == "logging":
        return _out(args, _call(args, "PUT", f"/v1/logging?level={args.level}"), lambda d: f"log level {d['level']}")
    if c == "workloads":
        if args.action == "add":
            return _out(args, _call(args, "POST", "/v1/workloads", workload_body(args)),
                        lambda d: f"registered {d['uid']}")
        if args.action == "remove":
            return _out(args, _call(args, "DELETE", f"/v1/workloads/{args.uid}"), lambda d: f"removed {d['uid']}")
        return _out(args, _call(args, "GET", "/v1/workloads"), views.workloads)
    if c == "policies":
        return _policies(args)
    if c == "traffic":
        return _out(args, _call(args, "GET", "/v1/traffic"), views.traffic)
    if c == "connections":
        if not args.watch:
            return _out(args, _call(args, "GET", "/v1/connections"), views.connections)
        try:
            while True:
                d = _call(args, "GET", "/v1/connections")
                sys.stdout.write("\033[H\033[2J" + time.strftime("%H:%M:%S ") + f"{len(d)} connection(s)\n"
                                 + views.connections(d) + "\n")
                sys.stdout.flush()
                time.sleep(1)
        except KeyboardInterrupt:
            return 0
    return 2
