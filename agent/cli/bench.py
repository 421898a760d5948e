"""`hostmesh bench [--quick] [--only SCENARIO[,..]] [--paths PATH[,..]] [--ztunnel BIN]
[--merge FILE] [--note TEXT] [--json FILE] [--plots DIR] [--report FILE]`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="the benchmark suite in the lab: direct vs HAProxy vs hostmesh")
    p.add_argument("--quick", action="store_true", help="short runs (under 3 minutes); proves the harness")
    p.add_argument("--only", metavar="SCENARIO[,..]", help="run these scenarios only (e.g. pingpong,http-l7-1000rps)")
    p.add_argument("--paths", metavar="PATH[,..]", help="on these paths only (e.g. haproxy,hostmesh)")
    p.add_argument("--ztunnel", metavar="BIN", type=Path,
                   help="a ztunnel binary (built with --features testing, for its fake CA) run as the extra path 'ztunnel'")
    p.add_argument("--merge", metavar="FILE", type=Path,
                   help="an earlier run's JSON: this run's figures replace its figures for the same scenario and path")
    p.add_argument("--note", help="a sentence on the run's conditions, kept in the JSON and the report")
    p.add_argument("--json", type=Path, help="write results as JSON here")
    p.add_argument("--plots", type=Path, help="write PNG plots into this directory")
    p.add_argument("--report", type=Path, help="write the Markdown report here (e.g. docs/benchmarks.md)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from agent.bench.runner import Selection, merge
    from agent.bench.ztunnel import ZtunnelError, check_binary

    try:
        sel = Selection.parse(args.only, args.paths)
        ztunnel = check_binary(args.ztunnel) if args.ztunnel else None
        old = json.loads(args.merge.read_text()) if args.merge else None
    except (ValueError, OSError, ZtunnelError) as e:
        print(f"hostmesh bench: {e}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("hostmesh bench needs root (it builds network namespaces)", file=sys.stderr)
        return 2
    from agent.bench import report
    from agent.bench.runner import run_bench

    doc = run_bench(args.quick, progress=lambda s: print(s, flush=True), sel=sel, ztunnel=ztunnel)
    if args.note:
        doc["note"] = args.note
    if old is not None:
        doc = merge(old, doc)
    print()
    print(report.table(doc))
    if args.json:
        report.write_json(doc, args.json)
    images = report.plots(doc, args.plots) if args.plots else []
    if args.report:
        args.report.write_text(report.markdown(doc, images, args.report))
    return 0 if doc["results"] else 1
