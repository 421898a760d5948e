"""Presenting a benchmark run: a table for people, the JSON document (SPEC.md shape),
PNG plots, and the Markdown report in docs/benchmarks.md."""

from __future__ import annotations

import json
from pathlib import Path

PATH_ORDER = ["direct", "haproxy", "hostmesh", "hostmesh-same-node", "hostmesh-trio-relay",
              "hostmesh-telemetry-off", "hostmesh-2-workers"]


def table(doc: dict) -> str:
    rows = doc["results"]
    keys = sorted({(r["scenario"], r["metric"]) for r in rows})
    paths = [p for p in PATH_ORDER if any(r["path"] == p for r in rows)]
    head = ["scenario", "metric", *paths]
    lines = [head]
    for s, m in keys:
        vals = {r["path"]: r["value"] for r in rows if (r["scenario"], r["metric"]) == (s, m)}
        lines.append([s, m, *[f"{vals[p]:g}" if p in vals else "-" for p in paths]])
    widths = [max(len(str(r[i])) for r in lines) for i in range(len(head))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)) for r in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.append("")
    out.append("targets:")
    for t in doc["targets"]:
        mark = "MET " if t["met"] else "MISS"
        val = "-" if t["value"] is None else f"{t['value']:g}"
        out.append(f"  [{mark}] {t['name']}: {val} (goal {t['goal']}){' — ' + t['note'] if t.get('note') else ''}")
    for e in doc.get("errors", []):
        out.append(f"  [ERR ] {e['step']}: {e['error'][:160]}")
    return "\n".join(out)


def write_json(doc: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def plots(doc: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    made = []
    charts = [("bulk-1", "gbit_s", "iperf3, 1 stream (Gbit/s, higher is better)"),
              ("bulk-4", "gbit_s", "iperf3, 4 streams (Gbit/s, higher is better)"),
              ("pingpong", "p50_us", "sockperf ping-pong p50 (us, lower is better)"),
              ("pingpong", "p99_us", "sockperf ping-pong p99 (us, lower is better)"),
              ("http-1000rps", "p90_ms", "HTTP at 1,000 rps, p90 (ms, lower is better)"),
              ("connect-rate", "conn_per_s", "new connection per request (conn/s, higher is better)")]
    for scenario, metric, title in charts:
        vals = [(r["path"], r["value"]) for r in doc["results"] if (r["scenario"], r["metric"]) == (scenario, metric)]
        if not vals:
            continue
        vals.sort(key=lambda pv: PATH_ORDER.index(pv[0]) if pv[0] in PATH_ORDER else 99)
        fig, ax = plt.subplots(figsize=(7, 3.2))
        colors = ["#888888" if p == "direct" else "#d98b2b" if p == "haproxy" else "#2b6cd9" for p, _ in vals]
        ax.barh([p for p, _ in vals], [v for _, v in vals], color=colors)
        for i, (_, v) in enumerate(vals):
            ax.text(v, i, f" {v:g}", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        f = out / f"bench-{scenario}-{metric}.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        made.append(f)
    return made


def markdown(doc: dict, images: list[Path], md_path: Path) -> str:
    m = doc["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `hostmesh bench{' --quick' if doc.get('quick') else ''}` in one run on this machine: "
        f"{m['cpus']} cores, Linux {m['kernel']}, Python {m['python']}. Every path runs the same real tools "
        "(iperf3, sockperf, hey against nginx) from a client pod on node-1 to a server pod on node-0 "
        "of a lab; `hostmesh-same-node` uses a client pod on node-0. The proxies, the client and the "
        "server share the 2 cores, so every proxy is CPU-bound and only ratios from the same run mean much.",
        "",
        "## Results",
        "",
        "```",
        table(doc),
        "```",
        "",
    ]
    for img in images:
        rel = img.relative_to(md_path.parent) if md_path.parent in img.parents else img
        lines.append(f"![{img.stem}]({rel})")
    return "\n".join(lines) + "\n"
