"""`hostmesh bench`: every scenario over every path in one run, side by side.

Phase 1, a lab without agents: ``direct`` (no capture), ``haproxy`` (HAProxy at both
ends, same mTLS hop; ``mode http`` with a deny rule on the L7 port), ``haproxy-plain``
(the same HAProxies with no TLS on the hop: bulk's floor, ``PLAIN``) and, given
``--ztunnel BIN``, ``ztunnel`` (a user-supplied ztunnel at both ends, HBONE). Phase 2, a
lab whose agents run the native core (the one data plane):
``hostmesh`` and ``hostmesh-same-node``, then the agents restarted once per variant in
``VARIANTS``. A variant whose configuration the agent refuses (a key not there yet, an
engine already removed) is skipped with its error recorded; a scenario that fails on a
path is recorded under ``errors``; the run goes on either way.

``Selection`` (``--only``, ``--paths``) picks a subset, so one disturbed figure can be
measured again and merged into an earlier run's document (``merge``).
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.bench import scenarios as sc
from agent.bench.haproxy import HAProxyPath
from agent.bench.lab import Lab, hm
from agent.bench.targets import compute

logger = logging.getLogger("hostmesh.bench")

SCENARIOS = ("bulk-1", "bulk-4", "pingpong", "http-1000rps", "http-l7-1000rps", "connect-rate", "idle-10k",
             "policy-10k", "discovery")
STANDARD = ("bulk-1", "bulk-4", "pingpong", "http-1000rps", "http-l7-1000rps", "connect-rate")
NATIVE = {"dataplane": {"engine": "native"}}
# path -> (configuration merged over the native base, the scenarios it runs). Dropped
# since the Python data plane: one-shot (hostmesh-streams/1 off; the native core has
# no reusable streams, hostmesh-connect is its one-handshake-per-connection path),
# trio-relay (a Python relay beside a Rust core says nothing) and 2-workers (the core
# runs in one process; its threads replace workers, hence 2-threads).
VARIANTS: dict[str, tuple[dict, tuple[str, ...]]] = {
    # HTTP/1.1 CONNECT with one TLS connection per tunnelled connection, beside HBONE
    "hostmesh-connect": ({"dataplane": {"engine": "native", "tunnel_protocol": "connect"}}, STANDARD + ("idle-10k",)),
    "hostmesh-telemetry-off": ({"telemetry": {"access_log": "off", "http_metrics": "off"}},
                               ("http-1000rps", "http-l7-1000rps")),
    "hostmesh-2-threads": ({"dataplane": {"engine": "native", "threads": 2}}, ("bulk-1", "bulk-4")),
    # Python decides every connection (no answers for repeat flows in the core,
    # decisions/0006): the same run's measure of what that saves
    "hostmesh-decide-all": ({"dataplane": {"engine": "native", "repeat_decisions": False}}, ("connect-rate",)),
    "hostmesh-connect-decide-all": ({"dataplane": {"engine": "native", "tunnel_protocol": "connect",
                                                   "repeat_decisions": False}}, ("connect-rate",)),
}
# haproxy-plain: what any relay carries here without crypto (bulk's ceiling; ping-pong's
# floor beside it, cheap)
PLAIN = ("bulk-1", "bulk-4", "pingpong")
# what phase 3 measures again on the reference paths (the targets within a drift of the
# goal; connect-rate's and idle-10k's margins are several times any drift seen)
BRACKETED = ("bulk-1", "bulk-4", "pingpong", "http-1000rps", "http-l7-1000rps")
PATHS = ("direct", "haproxy", "haproxy-plain", "ztunnel", "hostmesh", "hostmesh-same-node", *VARIANTS)


@dataclass(frozen=True)
class Selection:
    """Which scenarios and paths run (None: all). Unknown names are refused up front."""

    scenarios: frozenset[str] | None = None
    paths: frozenset[str] | None = None

    @classmethod
    def parse(cls, only: str | None, paths: str | None) -> Selection:
        def names(text: str | None, known: tuple[str, ...], what: str) -> frozenset[str] | None:
            if not text:
                return None
            got = frozenset(x.strip() for x in text.split(",") if x.strip())
            bad = sorted(got - set(known))
            if bad:
                raise ValueError(f"unknown {what} {', '.join(bad)} (known: {', '.join(known)})")
            return got
        return cls(names(only, SCENARIOS, "scenario"), names(paths, PATHS, "path"))

    def wants(self, path: str, scenario: str | None = None) -> bool:
        return ((self.paths is None or path in self.paths)
                and (scenario is None or self.scenarios is None or scenario in self.scenarios))

    def any(self, path: str, scenarios: tuple[str, ...]) -> bool:
        return any(self.wants(path, s) for s in scenarios)


class Run:
    def __init__(self, quick: bool, progress: Callable[[str], None], sel: Selection) -> None:
        self.quick = quick
        self.d = sc.Durations.pick(quick)
        self.results: list[dict] = []
        self.errors: list[dict] = []
        self.progress = progress
        self.sel = sel

    def step(self, what: str, fn: Callable[[], list[dict]]) -> None:
        t0 = time.monotonic()
        try:
            rows = fn()
            self.results += rows
            shown = ", ".join(f"{r['metric']}={r['value']}" for r in rows)
            self.progress(f"  {what}: {shown} ({time.monotonic() - t0:.0f} s)")
        except Exception as e:  # a failed tool run is a finding, not a crash
            self.error(what, e)

    def error(self, what: str, e: BaseException | str) -> None:
        self.errors.append({"step": what, "error": str(e)[:500]})
        self.progress(f"  {what}: FAILED: {str(e)[:200]}")

    def scenarios(self, lab: Lab, path: str, client: str, pids: list[int], n_agents: int, work: Path,
                  which: tuple[str, ...] = STANDARD, tls_ports: range = range(15008, 15009)) -> None:
        d = self.d
        steps: dict[str, Callable[[], list[dict]]] = {
            "bulk-1": lambda: sc.bulk(lab, path, client, d, 1, pids),
            "bulk-4": lambda: sc.bulk(lab, path, client, d, 4, pids),
            # the latency scenarios: d.repeats runs each, their medians (sc.median_rows)
            "pingpong": lambda: sc.repeated(lambda: sc.pingpong(lab, path, client, d), d.repeats),
            "http-1000rps": lambda: sc.repeated(
                lambda: sc.http_fixed_rate(lab, path, client, d, pids, n_agents), d.repeats),
            "http-l7-1000rps": lambda: sc.repeated(
                lambda: sc.http_fixed_rate(lab, path, client, d, pids, n_agents, l7=True), d.repeats),
            "connect-rate": lambda: sc.connect_rate(lab, path, client, d),
            "idle-10k": lambda: sc.idle(lab, path, client, d, pids, work, tls_ports),
        }
        for s in which:
            if self.sel.wants(path, s):
                self.step(f"{path} {s}", steps[s])


def references(run: Run, lab: Lab, work: Path, here: Path, which: tuple[str, ...], when: str = "") -> None:
    """The reference paths in a lab without agents: direct, HAProxy with TLS on ``which``
    and haproxy-plain on bulk and ping-pong (phase 1, and phase 3 after the agents)."""
    ports, l7 = list(sc.PORTS.values()), {sc.PORTS["http_l7"]: sc.L7_DENIED}
    run.scenarios(lab, "direct", "cli", [], 0, work, which)
    for path, tls, scenarios in (("haproxy", True, which), ("haproxy-plain", False, PLAIN)):
        if not run.sel.any(path, scenarios):
            continue
        try:
            with HAProxyPath(lab, here, ports, l7, tls=tls) as hp:
                run.scenarios(lab, path, "cli", hp.pids, 2, work, scenarios)
        except Exception as e:
            run.error(f"{path} setup{when}", e)


def run_bench(quick: bool, progress: Callable[[str], None] = print, sel: Selection | None = None,
              ztunnel: Path | None = None) -> dict:
    from agent.cli.run import _raise_fd_limit

    _raise_fd_limit()  # HAProxy and the idle-connection holders inherit it
    sel = sel or Selection()
    run = Run(quick, progress, sel)
    work = Path(tempfile.mkdtemp(prefix="hostmesh-bench-"))
    progress(f"benchmark ({'quick' if quick else 'full'}), work dir {work}")

    phase1 = ["direct", "haproxy", "haproxy-plain"] + (["ztunnel"] if ztunnel else [])
    if any(sel.any(p, STANDARD + ("idle-10k",)) for p in phase1):
        progress(f"phase 1: lab without agents ({', '.join(phase1)})")
        with Lab("benchd", work / "d", agents=False) as lab:
            sc.start_servers(lab, work / "d")
            references(run, lab, work, work / "d", STANDARD)
            if ztunnel and sel.any("ztunnel", STANDARD + ("idle-10k",)):
                from agent.bench.ztunnel import ZtunnelPath

                try:  # ztunnel has no L7 policy: http-l7 is not its figure
                    with ZtunnelPath(lab, work / "d", ztunnel) as zt:
                        which = tuple(s for s in STANDARD if s != "http-l7-1000rps") + ("idle-10k",)
                        run.scenarios(lab, "ztunnel", "cli", zt.pids, 2, work, which)
                except Exception as e:
                    run.error("ztunnel setup", e)

    hm_paths = ["hostmesh", "hostmesh-same-node", *VARIANTS]
    measured_hm = any(sel.any(p, STANDARD + ("idle-10k",)) for p in hm_paths)
    if measured_hm:
        progress("phase 2: lab with hostmesh agents (native core)")
        with Lab("benchm", work / "m", agents=True) as lab:
            sc.start_servers(lab, work / "m")
            apply_l7_policy(lab, work / "m", run)
            run.scenarios(lab, "hostmesh", "cli", lab.agent_pids(), 2, work, STANDARD + ("idle-10k",))
            run.scenarios(lab, "hostmesh-same-node", "cli0", [], 1, work, ("bulk-1", "pingpong"))
            restarted = False
            for variant, (setting, which) in VARIANTS.items():
                if not sel.any(variant, which):
                    continue
                restarted = True
                try:
                    restart_agents(lab, setting)
                except Exception as e:  # the configuration refuses it (not there yet, or removed)
                    run.error(f"{variant} restart", f"skipped: {e}")
                    continue
                apply_l7_policy(lab, work / "m", run)
                run.scenarios(lab, variant, "cli", lab.agent_pids(), 2, work, which)
            if restarted:
                restart_agents(lab, {})

    brackets: list[dict] = []
    if measured_hm and not quick and any(sel.any(p, BRACKETED) for p in ("direct", "haproxy", "haproxy-plain")):
        # phase 3: the references again, so each is the mean of a run before and one after
        # the agents' (sc.bracket): on 2 shared cores the machine drifts by up to a third
        # within a run, which a ratio across phases would otherwise carry as the proxy's
        progress("phase 3: the reference paths again, after the agents (direct, haproxy, haproxy-plain)")
        n = len(run.results)
        with Lab("benchd", work / "d3", agents=False) as lab:
            sc.start_servers(lab, work / "d3")
            references(run, lab, work, work / "d3", BRACKETED, " (phase 3)")
        after = run.results[n:]
        run.results[n:] = []
        run.results, brackets = sc.bracket(run.results, after)

    if sel.wants("hostmesh", "policy-10k"):
        progress("policy engine micro-benchmark")
        run.step("policy-10k", lambda: sc.policy(quick))
    if sel.wants("hostmesh", "discovery"):
        progress("kubernetes discovery against the fake API server")
        from agent.bench.discovery import scenario as discovery

        run.step("discovery", lambda: discovery([1000] if quick else [1000, 5000, 20000], progress))
    return {
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "quick": quick,
        # every scenario on every path: a run a later --merge starts the reruns list afresh from
        "full": sel == Selection(),
        "results": run.results,
        "targets": compute(run.results),
        "errors": run.errors,
        "brackets": brackets,
    }


def merge(old: dict, new: dict) -> dict:
    """``new``'s rows replace ``old``'s for the same (scenario, path); errors of the steps
    measured again are replaced too; targets computed afresh. A full ``new`` run is the
    document's run from then on: the reruns listed are only those merged after it (the rows
    it kept from ``old`` are paths it no longer measures, each labelled in the report). Pure."""
    again = {(r["scenario"], r["path"]) for r in new["results"]}
    steps = {e["step"] for e in new["errors"]} | {f"{p} {s}" for s, p in again}
    measured = {p for _, p in again}  # a path measured again: its old set-up errors are gone too
    results = [r for r in old["results"] if (r["scenario"], r["path"]) not in again] + new["results"]
    errors = [e for e in old.get("errors", []) if e["step"] not in steps
              and e["step"].split(" ", 1)[0] not in measured] + new["errors"]
    reruns = [] if new.get("full") else old.get("reruns", []) + [sorted(f"{p} {s}" for s, p in again)]
    # phase 3's before/after pairs: the new run's, and the old ones of rows it did not measure
    brackets = [b for b in old.get("brackets", []) if (b["scenario"], b["path"]) not in again] + \
        new.get("brackets", [])
    out = {**old, "results": results, "errors": errors, "targets": compute(results), "reruns": reruns,
           "brackets": brackets}
    if new.get("note"):
        out["note"] = new["note"]
    return out


def apply_l7_policy(lab: Lab, work: Path, run: Run) -> None:
    """The L7 path rule of http-l7-1000rps on every agent (idempotent: applied again after
    each restart)."""
    f = work / "l7-policy.yaml"
    f.write_text(sc.L7_POLICY)
    try:
        hm("lab", "apply", "--name", lab.name, str(f))
    except Exception as e:
        run.error("l7 policy apply", e)


def restart_agents(lab: Lab, overrides: dict) -> None:
    """Rewrite every node's config with ``overrides`` merged in, restart its agent. Every
    new config is checked by the agent's own loader first: one it refuses raises its
    ``path:line: message`` and leaves the running agents as they were."""
    import yaml

    from agent.config import parse_config

    configs = []
    for n in lab.status["nodes"]:
        cfg_path = Path(n["admin_socket"]).parent / "config.yaml"
        base = cfg_path.with_suffix(".base.yaml")
        if not base.exists():
            base.write_text(cfg_path.read_text())
        cfg = yaml.safe_load(base.read_text())
        for section, values in overrides.items():
            cfg.setdefault(section, {}).update(values)
        text = yaml.safe_dump(cfg)
        parse_config(text, str(cfg_path))  # ConfigError: the variant does not exist (yet, or any more)
        configs.append((n, cfg_path, text))
    for n, cfg_path, text in configs:
        cfg_path.write_text(text)
        hm("lab", "agent", "--name", lab.name, n["name"], "stop", check=False)
        hm("lab", "agent", "--name", lab.name, n["name"], "start")
    lab.refresh()
    sc.wait_ready(lab)
