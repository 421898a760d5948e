"""How `hostmesh ctl` shows the admin API's answers to people: JSON in, text out. Pure.

Never prints a Python ``repr``: every nested value is flattened to ``a.b: value`` lines
or a table, so what a person reads is what a script gets with ``--json``.
"""

from __future__ import annotations

from typing import Any

from agent.cli.table import render


def scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None:
        return "-"
    if isinstance(v, (list, tuple)):
        return ", ".join(scalar(x) for x in v) or "-"
    return str(v)


def flatten(d: Any, prefix: str = "") -> list[tuple[str, str]]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``[("a.b", "1"), ("c", "1, 2")]``."""
    if not isinstance(d, dict):
        return [(prefix or "value", scalar(d))]
    out: list[tuple[str, str]] = []
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out += flatten(v, key)
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                out += flatten(x, f"{key}[{i}]")
        else:
            out.append((key, "-" if isinstance(v, dict) else scalar(v)))
    return out


def aligned(pairs: list[tuple[str, str]]) -> str:
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in pairs)


def status(d: dict) -> str:
    top = {k: v for k, v in d.items() if k != "counts"}
    return aligned(flatten(top) + flatten(d.get("counts") or {}))


def stats(d: dict) -> str:
    """One block per section (counters, gauges, telemetry, engine, tunnels, ...) headed by its name."""
    blocks = []
    for section, body in d.items():
        pairs = flatten(body) if isinstance(body, dict) else [(section, scalar(body))]
        blocks.append(f"[{section}]\n" + (aligned(pairs) if pairs else "(none)"))
    return "\n\n".join(blocks)


def action(verb: str, d: Any) -> str:
    """``reload``/``drain`` answers: ``reload: ok`` and the details, one per line."""
    pairs = flatten(d) if isinstance(d, dict) and d else []
    return f"{verb}: ok" + ("\n" + aligned(pairs) if pairs else "")


def certs(d: list[dict]) -> str:
    return render(["identity", "state", "serial", "issuer", "not after", "expires in"],
                  [[x["identity"], x["state"], (x.get("serial") or "")[:16], x.get("issuer") or "-",
                    x.get("not_after") or "-",
                    "-" if x.get("expires_in_s") is None else f"{x['expires_in_s']} s"] for x in d])


def policies(d: list[dict]) -> str:
    def mode(p: dict) -> str:
        m = p.get("action") or p.get("mode") or "-"
        return f"{m} (dry-run)" if p.get("dry_run") else m

    return render(["kind", "namespace", "name", "action/mode", "source"],
                  [[p["kind"], p["namespace"], p["name"], mode(p), p["source"]] for p in d])


def workloads(d: list[dict]) -> str:
    return render(["uid", "name", "namespace", "service account", "ip", "node"],
                  [[w["uid"], w["name"], w["namespace"], w["service_account"], w["ip"], w["node"] or "(local)"]
                   for w in d])


def _end(e: dict) -> str:
    who = f"{e['namespace']}/{e['workload']}" if e.get("workload") else ""
    return f"{e['ip']}:{e['port']}" + (f" ({who})" if who else "")


def connections(d: list[dict]) -> str:
    return render(["id", "dir", "mode", "source", "destination", "verdict", "sent", "received", "age"],
                  [[x["id"], x["direction"], x["mode"], _end(x["src"]), _end(x["dst"]), x["verdict"],
                    x["bytes_sent"], x["bytes_received"], f"{x.get('age_s', 0):.1f}s"] for x in d])


def traffic(d: dict) -> str:
    rules = render(["kind", "namespace", "name", "host(s)", "source"],
                   [[r["kind"], r["namespace"], r["name"], r.get("host") or ", ".join(r.get("hosts", [])), r["source"]]
                    for r in d["rules"]])
    ejected = render(["cluster", "endpoint", "reason", "times", "back in"],
                     [[e["cluster"], e["endpoint"], e["reason"], e["times_ejected"], f"{e['ejected_for_s']} s"]
                      for e in d["ejected"]])
    return f"{rules}\n\nejected endpoints:\n{ejected}" if d["ejected"] else f"{rules}\n\nno endpoint is ejected"
