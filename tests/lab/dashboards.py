"""Istio's Grafana dashboards as a test reads them: every panel query and template
variable of ``../shared/vectors/istio-dashboards/``, and Grafana's interpolation of
template variables (single values as they are, multi-value and "All" as a regex
alternation with Grafana's Prometheus escaping). Pure: no Prometheus calls here."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "vectors" / "istio-dashboards"
FILES = ("istio-mesh-dashboard.gen.json", "istio-service-dashboard.json", "istio-workload-dashboard.json",
         "ztunnel-dashboard.gen.json")
# Grafana's prometheusRegularEscape: regex metacharacters get a backslash, itself escaped
# inside the PromQL string.
_SPECIAL = set("$^*{}[]'+?.()|")


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref: str
    expr: str

    @property
    def name(self) -> str:
        return f"{self.dashboard}: {self.panel} [{self.ref}]"


@dataclass(frozen=True)
class Variable:
    name: str
    kind: str  # query | custom | datasource
    query: str
    regex: str
    multi: bool
    include_all: bool
    options: tuple[str, ...]


def load(file: str) -> dict:
    return json.loads((DIR / file).read_text())


def queries(file: str) -> list[Query]:
    d = load(file)
    out = []

    def walk(panels):
        for p in panels:
            for i, t in enumerate(p.get("targets") or []):
                if t.get("expr"):
                    out.append(Query(d["title"], p.get("title") or f"panel {p.get('id')}", t.get("refId") or str(i),
                                     t["expr"]))
            walk(p.get("panels") or [])

    walk(d["panels"])
    return out


def variables(file: str) -> list[Variable]:
    out = []
    for t in load(file).get("templating", {}).get("list", []):
        q = t.get("query")
        if isinstance(q, dict):
            q = q.get("query", "")
        opts = tuple(o["value"] for o in t.get("options") or [] if o.get("value") not in (None, "$__all"))
        if t["type"] == "custom" and not opts:
            opts = tuple(v.strip() for v in (q or "").split(","))
        out.append(Variable(t["name"], t["type"], q or "", (t.get("regex") or "").strip("/"), bool(t.get("multi")),
                            bool(t.get("includeAll")), opts))
    return out


def regex_escape(v: str) -> str:
    return "".join("\\\\" + c if c in _SPECIAL else c for c in v)


def format_value(values: list[str], multi: bool) -> str:
    """The text Grafana substitutes: one value as is; several as ``(a|b)``, escaped."""
    if len(values) == 1 and not multi:
        return values[0]
    if len(values) == 1:
        return regex_escape(values[0])
    return "(" + "|".join(regex_escape(v) for v in values) + ")"


def interpolate(expr: str, values: dict[str, str], rate_interval: str) -> str:
    out = expr.replace("$__rate_interval", rate_interval)
    for name in sorted(values, key=len, reverse=True):  # $srcwl before $srcw...
        out = out.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    left = re.findall(r"\$\w+", out)
    if left:
        raise ValueError(f"unfilled template variables {left} in {expr!r}")
    return out


def query_result_values(series: list[dict], regex: str) -> list[str]:
    """Grafana's ``query_result(...)``: each series as ``{labels} value ts``, the
    variable's regex applied, the first group kept (unique, sorted)."""
    rx = re.compile(regex) if regex else None
    out = set()
    for s in series:
        text = "{" + ",".join(f'{k}="{v}"' for k, v in s["metric"].items()) + "} " + str(s["value"][1])
        if rx is None:
            out.add(text)
            continue
        m = rx.match(text)
        if m:
            out.add(m.group(1))
    return sorted(out)


def inner_query(var_query: str) -> str:
    q = var_query.strip()
    if q.startswith("query_result(") and q.endswith(")"):
        return q[len("query_result("):-1]
    return q
