"""`hostmesh lab` operations: up, down, status, agents. The state file
``/run/hostmesh/lab/<name>/state.json`` is written before anything is created (intent
first), so ``down`` always finds what ``up`` made — also after a crash or SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from agent.lab import netns
from agent.lab.model import LabPlan, Topology, check_name, plan

RUN_DIR = os.environ.get("HOSTMESH_LAB_DIR", "/run/hostmesh/lab")
READY_TIMEOUT_S = 20.0


class LabError(RuntimeError):
    pass


def state_path(name: str) -> Path:
    return Path(RUN_DIR) / name / "state.json"


def load_state(name: str) -> dict:
    try:
        return json.loads(state_path(name).read_text())
    except FileNotFoundError:
        raise LabError(f"no lab named {name!r} (hostmesh lab up --name {name})") from None
    except ValueError:
        raise LabError(f"{state_path(name)}: unreadable lab state; run 'hostmesh lab down --name {name}'") from None


def save_state(name: str, state: dict) -> None:
    p = state_path(name)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(p)


def labs() -> list[str]:
    d = Path(RUN_DIR)
    return sorted(p.name for p in d.iterdir() if (p / "state.json").exists()) if d.is_dir() else []


def up(name: str, topo: Topology, *, agents: bool = True, kafka: bool = False, otlp: bool = False,
       prometheus: bool = False, capture: dict | None = None, progress=print,
       node_ca: bool = False) -> dict:
    """``node_ca``: every node mints its own SVIDs with a node intermediate (the
    single-host mode) instead of asking the lab's CA service (the default)."""
    check_name(name)
    if state_path(name).parent.exists() or netns.existing(f"hm-{name}-"):
        raise LabError(f"a lab named {name!r} exists already (hostmesh lab down --name {name}, or pick --name)")
    lp = plan(name, topo, RUN_DIR)
    Path(lp.dir).mkdir(parents=True, mode=0o700)
    state = {"name": name, "netns": lp.netns, "topology": topo.model_dump(), "agents": {}, "complete": False,
             "capture": capture or {"backend": "nftables", "fail": "closed"},
             "kafka": None, "otlp": None, "ca": None, "prometheus": None, "created": time.time()}
    save_state(name, state)
    try:
        t0 = time.monotonic()
        netns.build(lp)
        progress(f"lab {name}: {len(lp.nodes)} node(s), {len(lp.pods)} pod(s) wired in {time.monotonic() - t0:.1f} s")
        _ca(lp)
        if not node_ca:
            from agent.lab import casvc

            state["ca"] = {"address": f"{lp.ext_ip4}:{casvc.PORT}", "root": str(casvc.paths(lp)["root"]),
                           "pid": casvc.start(lp).pid}
            save_state(name, state)
        for n in lp.nodes:
            Path(n.dir).mkdir(parents=True, exist_ok=True)
            write_config(lp, n, state)
        if state["ca"]:
            casvc.wait(lp)
        if kafka or otlp:
            _services(lp, state, kafka, otlp)
            for n in lp.nodes:
                write_config(lp, n, state)
        if agents:
            for n in lp.nodes:
                state["agents"][n.name] = start_agent(lp, n)
            save_state(name, state)
            for n in lp.nodes:
                wait_ready(lp, n, state["agents"][n.name])
            progress(f"lab {name}: {len(lp.nodes)} agent(s) ready")
        if prometheus:  # after the agents: up returns once Prometheus has scraped them
            _prometheus(lp, state, wait_scraped=agents)
        state["complete"] = True
        save_state(name, state)
    except BaseException as e:
        down(name)
        if isinstance(e, (LabError, netns.LabError)):
            raise LabError(str(e)) from None
        raise
    return status(name)


def down(name: str) -> list[str]:
    """Remove everything lab ``name`` made; safe to call on a half-built or absent lab."""
    check_name(name)
    names = set(netns.existing(f"hm-{name}-"))
    try:
        state = json.loads(state_path(name).read_text())
        names |= set(state.get("netns", []))
        for pid in state.get("agents", {}).values():
            _kill(pid, signal.SIGKILL)
        for svc in ("kafka", "otlp", "ca", "prometheus"):
            if state.get(svc) and state[svc].get("pid"):
                _kill(state[svc]["pid"], signal.SIGKILL)
    except (FileNotFoundError, ValueError):
        pass
    left = netns.destroy(sorted(names))
    shutil.rmtree(Path(RUN_DIR) / name, ignore_errors=True)
    return left


def _kill(pid: int | None, sig: int) -> None:
    if not pid:
        return
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def lab_plan(name: str) -> tuple[LabPlan, dict]:
    state = load_state(name)
    return plan(name, Topology.model_validate(state["topology"]), RUN_DIR), state


def status(name: str) -> dict:
    lp, state = lab_plan(name)
    td = "cluster.local"
    return {
        "name": name,
        "nodes": [{"name": n.name, "netns": n.netns, "address": n.ip4, "address6": n.ip6,
                   "admin_socket": n.admin_socket, "agent_pid": _alive(state["agents"].get(n.name)),
                   "credential": _credential(lp, n.name) if state.get("ca") else None}
                  for n in lp.nodes],
        "pods": [{"name": p.name, "namespace": p.namespace, "service_account": p.service_account, "labels": p.labels,
                  "netns": p.netns, "ip": p.ip4, "ip6": p.ip6, "node": f"node-{p.node}", "identity": p.identity(td),
                  "http_ports": p.http_ports}
                 for p in lp.pods],
        "external": {"netns": lp.ext, "ip": lp.ext_ip4, "ip6": lp.ext_ip6},
        "kafka": state.get("kafka") and {"bootstrap": state["kafka"]["bootstrap"]},
        "otlp": state.get("otlp") and {"endpoint": state["otlp"]["endpoint"],
                                       "http_endpoint": state["otlp"].get("http_endpoint"),
                                       "received": state["otlp"].get("out")},
        "ca": state.get("ca") and {"address": state["ca"]["address"], "root": state["ca"]["root"],
                                   "pid": _alive(state["ca"].get("pid"))},
        "prometheus": state.get("prometheus") and {"url": state["prometheus"]["url"]},
        "complete": state.get("complete", False),
    }


def _credential(lp: LabPlan, node: str) -> dict:
    from agent.lab import casvc

    return casvc.credential(lp, node)


def _alive(pid: int | None) -> int | None:
    if not pid:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    try:  # a zombie is not an agent
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return None
    except OSError:
        return None
    return pid


def _ca(lp: LabPlan) -> None:
    from agent.identity import store

    d = Path(lp.dir) / "ca"
    store.init_dir(d, "cluster.local")
    for n in lp.nodes:  # also with the CA service: tests mint bad peers' SVIDs with them
        store.issue_node(d, n.name)


def write_config(lp: LabPlan, n, state: dict) -> Path:
    cfg = {
        "node": {"name": n.name, "address": n.ip4, "address6": n.ip6, "labels": _node_labels(state, n.index)},
        "cluster": {"pod_cidrs": [n.cidr4, n.cidr6], "services": _services_config(lp, state),
                    "nodes": [{"name": m.name, "address": m.ip4, "address6": m.ip6, "pod_cidrs": [m.cidr4, m.cidr6],
                               "labels": _node_labels(state, m.index)} for m in lp.nodes]},
        "admin": {"socket": n.admin_socket},
        "identity": _identity_config(lp, n, state),
        "capture": {"enabled": True, **state.get("capture", {"backend": "nftables", "fail": "closed"})},
        "ports": {"metrics_bind": "0.0.0.0"},
        "drain": {"deadline_s": 5.0, "accept_grace_s": 3.0},
        "state_dir": n.dir,
        "workloads": [p.workload(None if p.node == n.index else f"node-{p.node}") for p in lp.pods],
        "telemetry": {"access_log": "stderr"},
    }
    if state.get("kafka"):
        cfg["telemetry"]["kafka"] = {"bootstrap": state["kafka"]["bootstrap"], "linger_ms": 20}
    if state.get("otlp"):
        cfg["telemetry"]["otlp"] = {"endpoint": state["otlp"]["endpoint"], "protocol": "grpc",
                                    "export_interval_s": 2.0}
    path = Path(n.dir) / "config.yaml"
    base = Path(n.dir) / "config.base.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    base.unlink(missing_ok=True)
    return path


def _identity_config(lp: LabPlan, n, state: dict) -> dict:
    if state.get("ca"):
        from agent.lab import casvc

        return casvc.identity_config(lp, n.name)
    d = Path(lp.dir) / "ca"
    return {"trust_domain": "cluster.local", "ca_cert": str(d / "nodes" / n.name / "cert.pem"),
            "ca_key": str(d / "nodes" / n.name / "key.pem"), "trust_bundle": str(d / "bundle.pem")}


def _node_labels(state: dict, index: int) -> dict:
    labels = state["topology"].get("node_labels") or {}
    return dict(labels.get(index) or labels.get(str(index)) or {})


def _services_config(lp: LabPlan, state: dict) -> list[dict]:
    out = []
    for svc in state["topology"].get("services", []):
        ips = [lp.pod(e).ip4 for e in svc["endpoints"]]
        out.append({"name": svc["name"], "namespace": svc["namespace"], "vip": svc["vip"], "ports": [svc["port"]],
                    "target_port": svc["target_port"], "endpoints": ips})
    return out


def _services(lp: LabPlan, state: dict, kafka: bool, otlp: bool) -> None:
    try:
        from agent.lab import services
    except ImportError:
        raise LabError("--kafka/--otlp: the lab's telemetry services are not available in this build") from None
    work = Path(lp.dir) / "services"
    work.mkdir(exist_ok=True)
    if kafka:
        p = services.start_kafka(lp.ext, lp.ext_ip4, 9092, work)
        state["kafka"] = {"bootstrap": f"{lp.ext_ip4}:9092", "pid": p.pid}
    if otlp:
        p = services.start_otlp(lp.ext, lp.ext_ip4, 4317, 4318, work)
        state["otlp"] = {"endpoint": f"http://{lp.ext_ip4}:4317", "http_endpoint": f"http://{lp.ext_ip4}:4318",
                         "pid": p.pid, "out": str(work / "otlp.jsonl")}
    save_state(lp.name, state)


def _prometheus(lp: LabPlan, state: dict, wait_scraped: bool) -> None:
    """Prometheus in the external namespace, scraping every node's agent (its :15020 is
    bound to all of the node's addresses in the lab, so the underlay reaches it)."""
    from agent.lab import services

    work = Path(lp.dir) / "services"
    work.mkdir(exist_ok=True)
    try:
        p = services.start_prometheus(lp.ext, lp.ext_ip4, 9090, work, [(n.name, n.ip4) for n in lp.nodes])
        state["prometheus"] = {"url": f"http://{lp.ext_ip4}:9090", "pid": p.pid}
        save_state(lp.name, state)
        if wait_scraped:
            services.wait_scraped(lp.ext, state["prometheus"]["url"], len(lp.nodes))
    except RuntimeError as e:
        raise LabError(f"--prometheus: {e}") from None


def start_agent(lp: LabPlan, n) -> int:
    log = open(Path(n.dir) / "agent.log", "ab")
    p = subprocess.Popen(["ip", "netns", "exec", n.netns, sys.executable, "-m", "agent", "--log-format", "json",
                          "run", "--config", str(Path(n.dir) / "config.yaml")],
                         stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    return p.pid


def wait_ready(lp: LabPlan, n, pid: int, timeout: float = READY_TIMEOUT_S) -> None:
    code = ("import urllib.request,sys\n"
            "try:\n sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:15021/healthz/ready',timeout=1).status==200 else 1)\n"
            "except Exception:\n sys.exit(1)\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _alive(pid) is None:
            break
        r = subprocess.run(["ip", "netns", "exec", n.netns, sys.executable, "-c", code], capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.2)
    tail = (Path(n.dir) / "agent.log").read_text(errors="replace").splitlines()[-8:]
    raise LabError(f"agent on {n.name} did not become ready: " + " | ".join(tail))


def agent(name: str, node: str, action: str) -> dict:
    lp, state = lab_plan(name)
    n = lp.node(node)
    if n is None:
        raise LabError(f"lab {name!r} has no node {node!r} (nodes: {', '.join(m.name for m in lp.nodes)})")
    pid = _alive(state["agents"].get(n.name))
    if action in ("stop", "kill"):
        if pid is None:
            return {"node": n.name, "agent_pid": None, "was_running": False}
        _kill(pid, signal.SIGTERM if action == "stop" else signal.SIGKILL)
        deadline = time.monotonic() + (60 if action == "stop" else 5)
        while _alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
        if action == "stop" and _alive(pid):
            _kill(pid, signal.SIGKILL)
        state["agents"][n.name] = None
    elif action == "start":
        if pid is not None:
            raise LabError(f"the agent on {n.name} is running (pid {pid}): lab agent {n.name} stop first")
        if _listening(n.netns, 15008):
            raise LabError(f"an agent started by hand already listens on {n.name}'s :15008: stop it first")
        pid = start_agent(lp, n)
        state["agents"][n.name] = pid
        save_state(name, state)
        wait_ready(lp, n, pid)
    else:
        raise LabError(f"unknown action {action!r}: stop, start or kill")
    save_state(name, state)
    return {"node": n.name, "agent_pid": state["agents"][n.name]}


def _listening(ns: str, port: int) -> bool:
    from agent.drain import listeners_on

    r = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/tcp", "/proc/net/tcp6"],
                       capture_output=True, text=True)
    return listeners_on(r.stdout, port) > 0


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
