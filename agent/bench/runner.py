"""`hostmesh bench`: every scenario over every path in one run, side by side.

Phase 1, a lab without agents: ``direct`` (no capture) and ``haproxy`` (HAProxy at both
ends, same mTLS hop). Phase 2, a lab with agents: ``hostmesh`` (cross-node tunnel),
``hostmesh-same-node``, then the agents restarted on the native core
(``hostmesh-native``, every scenario), with one TLS connection per tunnelled
connection (``hostmesh-one-shot``: CONNECT, no reusable streams), the plain trio relay
(``hostmesh-trio-relay``), with telemetry off, and with two workers. A scenario that
fails on a path is recorded under ``errors`` and the run goes on.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agent.bench import scenarios as sc
from agent.bench.haproxy import HAProxyPath
from agent.bench.lab import Lab, hm
from agent.bench.targets import compute

logger = logging.getLogger("hostmesh.bench")


class Run:
    def __init__(self, quick: bool, progress: Callable[[str], None]) -> None:
        self.quick = quick
        self.d = sc.Durations.pick(quick)
        self.results: list[dict] = []
        self.errors: list[dict] = []
        self.progress = progress

    def step(self, what: str, fn: Callable[[], list[dict]]) -> None:
        t0 = time.monotonic()
        try:
            rows = fn()
            self.results += rows
            shown = ", ".join(f"{r['metric']}={r['value']}" for r in rows)
            self.progress(f"  {what}: {shown} ({time.monotonic() - t0:.0f} s)")
        except Exception as e:  # a failed tool run is a finding, not a crash
            self.errors.append({"step": what, "error": str(e)[:500]})
            self.progress(f"  {what}: FAILED: {str(e)[:200]}")

    def standard(self, lab: Lab, path: str, client: str, pids: list[int], n_agents: int, full: bool = True) -> None:
        d = self.d
        self.step(f"{path} bulk-1", lambda: sc.bulk(lab, path, client, d, 1))
        if full:
            self.step(f"{path} bulk-4", lambda: sc.bulk(lab, path, client, d, 4))
        self.step(f"{path} pingpong", lambda: sc.pingpong(lab, path, client, d))
        if full:
            self.step(f"{path} http-1000rps", lambda: sc.http_fixed_rate(lab, path, client, d, pids, n_agents))
            self.step(f"{path} connect-rate", lambda: sc.connect_rate(lab, path, client, d))


def run_bench(quick: bool, progress: Callable[[str], None] = print) -> dict:
    from agent.cli.run import _raise_fd_limit

    _raise_fd_limit()  # HAProxy and the idle-connection holders inherit it
    run = Run(quick, progress)
    work = Path(tempfile.mkdtemp(prefix="hostmesh-bench-"))
    ports = list(sc.PORTS.values())
    progress(f"benchmark ({'quick' if quick else 'full'}), work dir {work}")

    progress("phase 1: lab without agents (direct, haproxy)")
    with Lab("benchd", work / "d", agents=False) as lab:
        sc.start_servers(lab, work / "d")
        run.standard(lab, "direct", "cli", [], 0)
        try:
            with HAProxyPath(lab, work / "d", ports) as hp:
                run.standard(lab, "haproxy", "cli", hp.pids, 2)
        except Exception as e:
            run.errors.append({"step": "haproxy setup", "error": str(e)[:500]})
            progress(f"  haproxy path FAILED to start: {e}")

    progress("phase 2: lab with hostmesh agents")
    with Lab("benchm", work / "m", agents=True) as lab:
        sc.start_servers(lab, work / "m")
        pids = lab.agent_pids()
        run.standard(lab, "hostmesh", "cli", pids, 2)
        run.step("hostmesh idle", lambda: sc.idle(lab, "hostmesh", "cli", run.d, lab.agent_pids()))
        run.standard(lab, "hostmesh-same-node", "cli0", [], 1, full=False)
        for variant, setting in (("hostmesh-native", {"dataplane": {"engine": "native"}}),
                                 ("hostmesh-one-shot", {"dataplane": {"tunnel_streams": False}}),
                                 ("hostmesh-trio-relay", {"dataplane": {"engine": "trio"}}),
                                 ("hostmesh-telemetry-off", {"telemetry": {"access_log": "off", "http_metrics": "off"}}),
                                 ("hostmesh-2-workers", {"dataplane": {"workers": 2}})):
            try:
                restart_agents(lab, setting)
            except Exception as e:
                run.errors.append({"step": f"{variant} restart", "error": str(e)[:500]})
                progress(f"  {variant}: agents did not restart: {e}")
                continue
            if variant == "hostmesh-native":  # the Rust core (decisions/0003): every scenario
                run.standard(lab, variant, "cli", lab.agent_pids(), 2)
                run.step(f"{variant} idle", lambda v=variant: sc.idle(lab, v, "cli", run.d, lab.agent_pids()))
            elif variant == "hostmesh-one-shot":  # one TLS connection per connection (CONNECT), decisions/0001
                run.step(f"{variant} connect-rate", lambda v=variant: sc.connect_rate(lab, v, "cli", run.d))
                run.standard(lab, variant, "cli", lab.agent_pids(), 2, full=False)
            elif variant == "hostmesh-trio-relay":
                run.standard(lab, variant, "cli", lab.agent_pids(), 2, full=False)
            elif variant == "hostmesh-telemetry-off":
                run.step(f"{variant} http-1000rps",
                         lambda v=variant: sc.http_fixed_rate(lab, v, "cli", run.d, lab.agent_pids(), 2))
            else:
                run.step(f"{variant} bulk-4", lambda v=variant: sc.bulk(lab, v, "cli", run.d, 4))
        restart_agents(lab, {})

    progress("policy engine micro-benchmark")
    run.step("policy-10k", lambda: sc.policy(quick))
    progress("kubernetes discovery against the fake API server")
    from agent.bench.discovery import scenario as discovery

    run.step("discovery", lambda: discovery([1000] if quick else [1000, 5000, 20000], progress))
    return {
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "quick": quick,
        "results": run.results,
        "targets": compute(run.results),
        "errors": run.errors,
    }


def restart_agents(lab: Lab, overrides: dict) -> None:
    """Rewrite every node's config with ``overrides`` merged in, restart its agent."""
    import yaml

    for n in lab.status["nodes"]:
        cfg_path = Path(n["admin_socket"]).parent / "config.yaml"
        base = cfg_path.with_suffix(".base.yaml")
        if not base.exists():
            base.write_text(cfg_path.read_text())
        cfg = yaml.safe_load(base.read_text())
        for section, values in overrides.items():
            cfg.setdefault(section, {}).update(values)
        cfg_path.write_text(yaml.safe_dump(cfg))
        hm("lab", "agent", "--name", lab.name, n["name"], "stop", check=False)
        hm("lab", "agent", "--name", lab.name, n["name"], "start")
    lab.refresh()
    sc.wait_ready(lab)
