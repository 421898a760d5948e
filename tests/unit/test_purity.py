"""Decision modules stay free of I/O (STYLE.md): read their imports, fail on any of
trio, socket, ssl, asyncio, threads, subprocesses — or the wall clock."""

import ast
import importlib.util
from pathlib import Path

import pytest

PURE = [
    "agent.yamlpos",
    "agent.schema",
    "agent.schema_values",
    "agent.schema_fast",
    "agent.config",
    "agent.state.workloads",
    "agent.proxy.plan",
    "agent.traffic.model",
    "agent.traffic.hosts",
    "agent.traffic.loader",
    "agent.traffic.documents",
    "agent.traffic.store",
    "agent.traffic.outlier",
    "agent.traffic.planner",
    "agent.traffic.http",
    "agent.proxy.conns",
    "agent.proxy.connect",
    "agent.proxy.hbone",
    "agent.rbac.model",
    "agent.rbac.loader",
    "agent.rbac.store",
    "agent.rbac.evaluate",
    "agent.rbac.matchers",
    "agent.rbac.pathnorm",
    "agent.rbac.validate",
    "agent.proxy.h1rules",
    "agent.identity.spiffe",
    "agent.identity.validate",
    "agent.identity.pem",
    "agent.identity.schedule",
    "agent.identity.ca",
    "agent.casvc.decide",
    "agent.casvc.settings",
    "agent.casvc.protocol",
    "agent.casvc.podview",
    "agent.telemetry.batcher",
    "agent.telemetry.record",
    "agent.telemetry.istio",
    "agent.telemetry.account",
    "agent.telemetry.metrics",
    "agent.capture.rules",
    "agent.lab.model",
    "agent.k8s.model",
    "agent.k8s.reconcile",
    "agent.admin.routes",
    "agent.drain",
    "agent.bench.parse",
    "agent.bench.targets",
]
FORBIDDEN = {"trio", "socket", "ssl", "asyncio", "threading", "subprocess", "selectors", "select"}
CLOCK = {("time", "time"), ("time", "monotonic"), ("time", "sleep"), ("datetime", "now")}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _clock_calls(path: Path) -> set[tuple[str, str]]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            base = node.func.value
            name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", None)
            if (name, node.func.attr) in CLOCK:
                out.add((name, node.func.attr))
    return out


@pytest.mark.parametrize("module", PURE)
def test_decision_module_has_no_io(module):
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, f"{module} is listed as a decision module but missing"
    path = Path(spec.origin)
    assert not (_imports(path) & FORBIDDEN), f"{module} imports {_imports(path) & FORBIDDEN}"
    assert not _clock_calls(path), f"{module} reads the clock: {_clock_calls(path)}"


def test_the_checker_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import trio\nimport time\nx = time.monotonic()\n")
    assert _imports(bad) & FORBIDDEN == {"trio"}
    assert _clock_calls(bad) == {("time", "monotonic")}
