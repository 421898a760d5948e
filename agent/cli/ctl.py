"""`hostmesh ctl`: the admin API for people (tables) and scripts (``--json``).

Exit codes: 0 ok, 1 the API answered with an error, 3 the agent is unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from agent.cli.table import render

DEFAULT_SOCKET = "/run/hostmesh/admin.sock"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ctl", help="talk to a running agent through its admin socket")
    p.add_argument("--socket", default=DEFAULT_SOCKET)
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    cs = p.add_subparsers(dest="ctl_cmd", metavar="COMMAND", required=True)
    for name in ("status", "certs", "stats", "reload", "drain", "config-dump"):
        c = cs.add_parser(name)
        c.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    w = cs.add_parser("workloads")
    w.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    ws = w.add_subparsers(dest="action")
    a = ws.add_parser("add")
    a.add_argument("--file", type=Path, help="a JSON body")
    a.add_argument("--uid")
    a.add_argument("--name")
    a.add_argument("--namespace", default="default")
    a.add_argument("--service-account", default="default")
    a.add_argument("--ip")
    a.add_argument("--label", action="append", default=[], help="k=v")
    a.add_argument("--http-port", action="append", type=int, default=[])
    r = ws.add_parser("remove")
    r.add_argument("uid")
    pol = cs.add_parser("policies")
    pol.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    ps = pol.add_subparsers(dest="action")
    pa = ps.add_parser("apply")
    pa.add_argument("file", type=Path)
    pd = ps.add_parser("delete")
    pd.add_argument("ref", help="NAMESPACE/NAME")
    tr = cs.add_parser("traffic", help="DestinationRules/VirtualServices in force and ejected endpoints")
    tr.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    con = cs.add_parser("connections")
    con.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    con.add_argument("--watch", action="store_true", help="refresh every second (Ctrl-C stops)")
    lg = cs.add_parser("logging")
    lg.add_argument("level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_ctl)


class _Failed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _call(args, method: str, path: str, body=None, ctype=None, headers=None):
    from agent.admin.client import AdminClient, AdminUnavailable

    try:
        status, data = AdminClient(args.socket).request(method, path, body, ctype, headers=headers)
    except AdminUnavailable as e:
        raise _Failed(3, str(e)) from None
    if not 200 <= status < 300:
        msg = data.get("error", {}).get("message") if isinstance(data, dict) else data
        raise _Failed(1, f"{status}: {msg}")
    return data


def cmd_ctl(args) -> int:
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


def _dispatch(args) -> int:
    c = args.ctl_cmd
    if c == "status":
        return _out(args, _call(args, "GET", "/v1/status"), lambda d: "\n".join(
            f"{k:>10}: {v}" for k, v in {**{k: v for k, v in d.items() if k != "counts"}, **d.get("counts", {})}.items()))
    if c == "certs":
        return _out(args, _call(args, "GET", "/v1/certs"), lambda d: render(
            ["identity", "state", "serial", "not after", "expires in"],
            [[x["identity"], x["state"], (x["serial"] or "")[:16], x["not_after"], f"{x['expires_in_s']} s"] for x in d]))
    if c == "stats":
        return _out(args, _call(args, "GET", "/v1/stats"), lambda d: "\n".join(
            f"{k}: {v}" for section in d.values() if isinstance(section, dict) for k, v in section.items()))
    if c in ("reload", "drain"):
        return _out(args, _call(args, "POST", f"/v1/{c}"), lambda d: f"{c}: {d}")
    if c == "config-dump":
        return _out(args, _call(args, "GET", "/v1/config_dump"))
    if c == "logging":
        return _out(args, _call(args, "PUT", f"/v1/logging?level={args.level}"), lambda d: f"log level {d['level']}")
    if c == "workloads":
        if args.action == "add":
            body = json.loads(args.file.read_text()) if args.file else {
                "uid": args.uid, "name": args.name, "namespace": args.namespace,
                "service_account": args.service_account, "ip": args.ip,
                "labels": dict(kv.split("=", 1) for kv in args.label), "http_ports": args.http_port}
            return _out(args, _call(args, "POST", "/v1/workloads", body), lambda d: f"registered {d['uid']}")
        if args.action == "remove":
            return _out(args, _call(args, "DELETE", f"/v1/workloads/{args.uid}"), lambda d: f"removed {d['uid']}")
        return _out(args, _call(args, "GET", "/v1/workloads"), lambda d: render(
            ["uid", "name", "namespace", "service account", "ip", "node"],
            [[w["uid"], w["name"], w["namespace"], w["service_account"], w["ip"], w["node"] or "(local)"] for w in d]))
    if c == "policies":
        if args.action == "apply":
            text = args.file.read_text()
            return _out(args, _call(args, "PUT", "/v1/policies", text.encode(), "application/yaml",
                                    {"x-source": str(args.file)}), lambda d: f"applied {', '.join(d['applied'])}")
        if args.action == "delete":
            ns, _, name = args.ref.partition("/")
            return _out(args, _call(args, "DELETE", f"/v1/policies/{ns}/{name}"), lambda d: f"deleted {d['deleted']}")
        return _out(args, _call(args, "GET", "/v1/policies"), lambda d: render(
            ["kind", "namespace", "name", "action/mode", "source"],
            [[p["kind"], p["namespace"], p["name"], p.get("action") or p.get("mode"), p["source"]] for p in d]))
    if c == "traffic":
        return _out(args, _call(args, "GET", "/v1/traffic"), _traffic_table)
    if c == "connections":
        def table(d):
            return render(["id", "dir", "mode", "source", "destination", "verdict", "sent", "received", "age"],
                          [[x["id"], x["direction"], x["mode"], _end(x["src"]), _end(x["dst"]), x["verdict"],
                            x["bytes_sent"], x["bytes_received"], f"{x.get('age_s', 0):.1f}s"] for x in d])
        if not args.watch:
            return _out(args, _call(args, "GET", "/v1/connections"), table)
        try:
            while True:
                d = _call(args, "GET", "/v1/connections")
                sys.stdout.write("\033[H\033[2J" + time.strftime("%H:%M:%S ") + f"{len(d)} connection(s)\n" + table(d) + "\n")
                sys.stdout.flush()
                time.sleep(1)
        except KeyboardInterrupt:
            return 0
    return 2


def _traffic_table(d: dict) -> str:
    rules = render(["kind", "namespace", "name", "host(s)", "source"],
                   [[r["kind"], r["namespace"], r["name"], r.get("host") or ", ".join(r.get("hosts", [])), r["source"]]
                    for r in d["rules"]])
    ejected = render(["cluster", "endpoint", "reason", "times", "back in"],
                     [[e["cluster"], e["endpoint"], e["reason"], e["times_ejected"], f"{e['ejected_for_s']} s"]
                      for e in d["ejected"]])
    return f"{rules}\n\nejected endpoints:\n{ejected}" if d["ejected"] else f"{rules}\n\nno endpoint is ejected"


def _end(e: dict) -> str:
    who = f"{e['namespace']}/{e['workload']}" if e.get("workload") else ""
    return f"{e['ip']}:{e['port']}" + (f" ({who})" if who else "")
