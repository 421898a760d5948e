"""`hostmesh bench [--quick] [--json FILE] [--plots DIR] [--report FILE]`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="the benchmark suite in the lab: direct vs HAProxy vs hostmesh")
    p.add_argument("--quick", action="store_true", help="short runs (under 3 minutes); proves the harness")
    p.add_argument("--json", type=Path, help="write results as JSON here")
    p.add_argument("--plots", type=Path, help="write PNG plots into this directory")
    p.add_argument("--report", type=Path, help="write the Markdown report here (e.g. docs/benchmarks.md)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("hostmesh bench needs root (it builds network namespaces)", file=sys.stderr)
        return 2
    from agent.bench import report
    from agent.bench.runner import run_bench

    doc = run_bench(args.quick, progress=lambda s: print(s, flush=True))
    print()
    print(report.table(doc))
    if args.json:
        report.write_json(doc, args.json)
    images = report.plots(doc, args.plots) if args.plots else []
    if args.report:
        args.report.write_text(report.markdown(doc, images, args.report))
    return 0 if doc["results"] else 1
