"""The lab's CA service: `hostmesh ca serve` in the lab's external namespace, signing
for every agent, with a per-node allow-list rendered from the lab's topology (the
CA's own view; what an agent registers never widens it). Each node gets a client
credential (``ca issue --node N --credential``) and no signing key.

``allow_list`` is pure; ``start`` / ``write_config`` touch files and processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from agent.identity import store

PORT = 15012  # Istio's CA port (istiod :15012)
TRUST_DOMAIN = "cluster.local"


def allow_list(lp, moves: dict[str, int] | None = None) -> dict[str, list[str]]:
    """node name -> SPIFFE IDs with a pod there; ``moves``: pod name -> new node index."""
    out: dict[str, list[str]] = {n.name: [] for n in lp.nodes}
    for p in lp.pods:
        node = (moves or {}).get(p.name, p.node)
        sid = p.identity(TRUST_DOMAIN)
        if sid not in out[f"node-{node}"]:
            out[f"node-{node}"].append(sid)
    return out


def paths(lp) -> dict[str, Path]:
    d = Path(lp.dir) / "ca"
    return {"dir": d, "config": Path(lp.dir) / "ca-service" / "ca.yaml", "log": Path(lp.dir) / "ca-service" / "ca.log",
            "audit": Path(lp.dir) / "ca-service" / "audit.jsonl", "root": d / "bundle.pem"}


def credential(lp, node: str) -> dict[str, str]:
    c = paths(lp)["dir"] / "nodes" / node / "credential"
    return {"cert": str(c / "cert.pem"), "key": str(c / "key.pem")}


def write_config(lp, nodes: dict[str, list[str]]) -> Path:
    """The CA service's configuration; written atomically, so the service's file watch
    sees the whole new allow-list or the old one."""
    p = paths(lp)
    d = p["dir"]
    cfg = {"listen": f"{lp.ext_ip4}:{PORT}", "trust_domain": TRUST_DOMAIN,
           "signing": {"cert": str(d / "root.pem"), "key": str(d / "root.key"), "bundle": str(d / "bundle.pem")},
           "server_names": [lp.ext_ip4], "audit_log": str(p["audit"]), "watch_interval_s": 0.5, "nodes": nodes}
    p["config"].parent.mkdir(parents=True, exist_ok=True)
    tmp = p["config"].with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    tmp.replace(p["config"])
    return p["config"]


def start(lp) -> subprocess.Popen:
    """Credentials for every node, the configuration, the service (not waited for)."""
    for n in lp.nodes:
        store.issue_node_credential(paths(lp)["dir"], n.name)
    cfg = write_config(lp, allow_list(lp))
    log = open(paths(lp)["log"], "ab")
    p = subprocess.Popen(["ip", "netns", "exec", lp.ext, sys.executable, "-m", "agent", "--log-format", "json",
                          "ca", "serve", "--config", str(cfg)],
                         stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    return p


def wait(lp, timeout: float = 15) -> None:
    from agent.lab.services import _wait

    try:
        _wait(lp.ext, lp.ext_ip4, PORT, timeout)
    except RuntimeError:
        tail = paths(lp)["log"].read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError("the lab's CA service did not start: " + " | ".join(tail)) from None


def identity_config(lp, node: str) -> dict:
    """The agents' ``identity`` section: the CA service, its root, the node credential."""
    cred = credential(lp, node)
    root = str(paths(lp)["root"])
    return {"trust_domain": TRUST_DOMAIN, "ca_address": f"{lp.ext_ip4}:{PORT}", "ca_root": root,
            "ca_credential_cert": cred["cert"], "ca_credential_key": cred["key"], "trust_bundle": root}
