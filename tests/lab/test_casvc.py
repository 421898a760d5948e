"""The lab's CA service (issue 18) with a real gRPC client inside a node's namespace:
node credentials get certificates only for identities with a workload on their node in
the CA's own view; a moved workload follows the view; agents get every SVID through it
and lose no connection while it is stopped for 60 s."""

import json
import os
import signal
import sys
import time
from pathlib import Path

import yaml

from tests.lab.conftest import hm, lab_up, ns_py, wait_for
from tests.lab.test_rotation import LOAD

TOPOLOGY = """\
nodes: 2
pods:
  - {name: web, namespace: shop, service_account: web-sa, labels: {app: web}, node: 0, http_ports: [8080]}
  - {name: db, namespace: data, service_account: db-sa, labels: {app: db}, node: 1}
"""
WEB = "spiffe://cluster.local/ns/shop/sa/web-sa"
DB = "spiffe://cluster.local/ns/data/sa/db-sa"
MOVER = "spiffe://cluster.local/ns/shop/sa/mover-sa"
# A gRPC client of Istio's protocol, run inside a node's namespace with that node's
# credential from `lab status --json`: prints "ok <serial>" or "<CODE> <details>".
CLIENT = """
import sys
from pathlib import Path
from agent.identity.caclient import CaClient, CaError, CaTarget
ca, cred = {ca!r}, {cred!r}
c = CaClient(CaTarget(ca["address"], Path(ca["root"]).read_bytes(), Path(cred["cert"]).read_bytes(),
                      Path(cred["key"]).read_bytes()))
for sid in {ids!r}:
    try:
        chain, key, leaf = c.fetch(sid, 600)
        print("ok", format(leaf.serial_number, "x"))
    except CaError as e:
        print(e.code, str(e).split(": ", 2)[-1])
"""


def ask(lab, node: int, *ids: str) -> list[str]:
    n = lab.node(node)
    r = ns_py(n["netns"], CLIENT.format(ca=lab.status["ca"], cred=n["credential"], ids=list(ids)), timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def set_allow_list(lab, nodes: dict) -> None:
    cfg_path = Path(f"/run/hostmesh/lab/{lab.name}/ca-service/ca.yaml")
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["nodes"] = nodes
    tmp = cfg_path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(cfg))
    tmp.replace(cfg_path)  # the service's file watch reloads it (every 0.5 s in the lab)


def audit(lab) -> list[dict]:
    p = Path(f"/run/hostmesh/lab/{lab.name}/ca-service/audit.jsonl")
    return [json.loads(line) for line in p.read_text().splitlines()]


def certs(lab, node: int) -> dict:
    return {c["identity"]: c for c in lab.admin(node, "GET", "/v1/certs")[1]}


def mover(node: int) -> dict:
    return {"uid": "shop.mover", "name": "mover", "namespace": "shop", "service_account": "mover-sa",
            "ip": f"198.19.{node}.50", "labels": {"app": "mover"}}


def test_node_credentials_get_only_their_nodes_identities_and_follow_a_move(tmp_path):
    with lab_up("gcanode", topology=TOPOLOGY, tmp=tmp_path) as lab:
        ca = lab.status["ca"]
        assert ca["address"] == "198.18.0.254:15012" and Path(ca["root"]).exists()
        assert all(Path(n["credential"]["cert"]).exists() for n in lab.status["nodes"])
        # every agent got its SVIDs from the service; no node config holds a signing key
        for i, sid in ((0, WEB), (1, DB)):
            c = certs(lab, i)[sid]
            assert c["state"] == "available" and c["issuer"] == f"ca-service {ca['address']}"
            cfg = yaml.safe_load((Path(lab.node(i)["admin_socket"]).parent / "config.yaml").read_text())
            assert "ca_key" not in cfg["identity"] and cfg["identity"]["ca_address"] == ca["address"]
        issued = {(a["node"], a["identity"]) for a in audit(lab) if a["verdict"] == "issued"}
        assert {("node-0", WEB), ("node-1", DB)} <= issued

        # node-0's credential, from node-0's namespace: web (on node-0) yes, db (only on node-1) no
        got = ask(lab, 0, WEB, DB)
        assert got[0].startswith("ok ")
        assert got[1] == f"PERMISSION_DENIED identity_not_on_node: {DB} has no workload on node node-0", got
        assert ask(lab, 1, DB)[0].startswith("ok ") and ask(lab, 1, WEB)[0].startswith("PERMISSION_DENIED ")
        refused = [a for a in audit(lab) if a["verdict"] == "refused"]
        assert [(a["node"], a["reason"]) for a in refused] == [("node-0", "identity_not_on_node"),
                                                               ("node-1", "identity_not_on_node")]

        # a workload on node-0: the CA's view lists it there (as Ansible renders it), the
        # agent asks when the pod registers; time to the first usable SVID
        set_allow_list(lab, {"node-0": [WEB, MOVER], "node-1": [DB]})
        time.sleep(1.2)
        t0 = time.monotonic()
        assert lab.admin(0, "POST", "/v1/workloads", mover(0))[0] in (200, 201)
        while certs(lab, 0).get(MOVER, {}).get("state") != "available":  # the admin call is the poll
            assert time.monotonic() - t0 < 20, certs(lab, 0).get(MOVER)
        print(f"\nregistration -> first usable SVID via the CA service: {(time.monotonic() - t0) * 1000:.0f} ms")
        assert ask(lab, 1, MOVER)[0].startswith("PERMISSION_DENIED identity_not_on_node")

        # it moves to node-1: node-1 is issued it, node-0 no longer
        set_allow_list(lab, {"node-0": [WEB], "node-1": [DB, MOVER]})
        assert lab.admin(0, "DELETE", "/v1/workloads/shop.mover")[0] in (200, 204)
        assert lab.admin(1, "POST", "/v1/workloads", mover(1))[0] in (200, 201)
        wait_for(lambda: certs(lab, 1).get(MOVER, {}).get("state") == "available", timeout=20)
        assert ask(lab, 1, MOVER)[0].startswith("ok ")
        assert ask(lab, 0, MOVER)[0] == f"PERMISSION_DENIED identity_not_on_node: {MOVER} has no workload on node node-0"
        # what node-0 registers never widens the CA's view
        assert lab.admin(0, "POST", "/v1/workloads", mover(0) | {"uid": "shop.mover2"})[0] in (200, 201)
        time.sleep(1.5)
        c = certs(lab, 0)[MOVER]
        assert c["state"] == "initializing" and "identity_not_on_node" in c["last_error"]


OUTAGE_S = 60


def test_ca_stopped_60s_under_new_connections_loses_none():
    """SVIDs live 90 s (renewal due at ~45 s); the CA is frozen (SIGSTOP: calls hang until
    their deadline, harsher than a refused connection) from 5 s to 65 s, so every renewal
    falls in the outage and backs off; the certificates in force carry the traffic, and
    the agents renew once it is back, before anything expires."""
    with lab_up("gcastop", "--nodes", "2", "--pods-per-node", "1") as lab:
        for n in lab.status["nodes"]:
            cfg_path = Path(n["admin_socket"]).parent / "config.yaml"
            cfg = yaml.safe_load(cfg_path.read_text())
            cfg["identity"]["ttl_s"] = 90
            cfg_path.write_text(yaml.safe_dump(cfg))
            hm("lab", "agent", "--name", lab.name, n["name"], "stop")
            assert hm("lab", "agent", "--name", lab.name, n["name"], "start").returncode == 0
        lab.refresh()
        lab.serve_http("pod-1-0", 8080)
        before = {i: {c["identity"]: c["serial"] for c in lab.admin(i, "GET", "/v1/certs")[1]} for i in (0, 1)}
        load = lab.spawn(lab.pod("pod-0-0")["netns"], sys.executable, "-c",
                         LOAD.format(seconds=OUTAGE_S + 25, ip=lab.pod("pod-1-0")["ip"]))
        time.sleep(5)
        pid = lab.status["ca"]["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(OUTAGE_S)
            during = [c for i in (0, 1) for c in lab.admin(i, "GET", "/v1/certs")[1]]
        finally:
            os.kill(pid, signal.SIGCONT)
        out, err = load.communicate(timeout=60)
        ok, bad = map(int, out.split())
        assert bad == 0 and ok > 500, out + err
        # the outage was felt: every renewal fell in it and failed, the old SVID served on
        assert all(c["last_error"] and c["state"] == "available" for c in during), during
        assert all(c["serial"] == before[0 if "pod-0" in c["identity"] else 1][c["identity"]] for c in during)
        wait_for(lambda: all(c["serial"] != before[i][c["identity"]] and c["state"] == "available"
                             for i in (0, 1) for c in lab.admin(i, "GET", "/v1/certs")[1]), timeout=30)
