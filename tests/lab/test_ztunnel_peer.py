"""Interoperability with Istio ambient's ztunnel itself (opt-in): a ztunnel binary the
user built plays node-1 (dedicated mode inside the client pod's namespace; no istiod: a
local workload file; certificates from its fake CA), hostmesh's agent plays node-0 (the web pod). Both
ends trust one root, ztunnel's fake-CA root, which node-0's agent also mints its SVIDs
from. Both directions ride HBONE: ztunnel -> hostmesh (hostmesh's server on the web
pod's captured :15008) and hostmesh -> ztunnel (hostmesh's pooled client to the client
pod's :15008, where ztunnel listens); a DENY at hostmesh reaches ztunnel's
client as 401.

Runs only when HOSTMESH_ZTUNNEL names the binary (built with ``--features testing``, as
docs/testing.md says) and HOSTMESH_ZTUNNEL_CA a directory holding ztunnel's
``src/tls/root-cert.pem`` and ``ca-key.pem``; the project ships none of ztunnel's code,
no binary and no script that builds one."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import yaml

from agent.bench import ztunnel as zt
from tests.lab.conftest import hm, lab_up, ns_run, wait_for, wait_listen

BIN, CA = os.environ.get("HOSTMESH_ZTUNNEL"), os.environ.get("HOSTMESH_ZTUNNEL_CA")
pytestmark = pytest.mark.skipif(not (BIN and CA), reason="set HOSTMESH_ZTUNNEL and HOSTMESH_ZTUNNEL_CA "
                                "(docs/testing.md, 'ztunnel as a peer')")

TOPOLOGY = """\
nodes: 2
pods:
  - {name: web, namespace: shop, service_account: web-sa, labels: {app: web}, node: 0}
  - {name: client, namespace: front, service_account: client-sa, labels: {app: client}, node: 1}
"""
DENY_CLIENT = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-client, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
    - from: [{source: {principals: ["cluster.local/ns/front/sa/client-sa"]}}]
      to: [{operation: {ports: ["8080"]}}]
"""
CHAIN = "HM_ZTPEER"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zpeer")
    with lab_up("zpeer", topology=TOPOLOGY, tmp=tmp) as lab:
        name = lab.name
        # node-0: hostmesh minting from ztunnel's fake-CA root (one trust domain, one root)
        path = Path(f"/run/hostmesh/lab/{name}/node-0/config.yaml")
        cfg = yaml.safe_load(path.read_text())
        cfg["identity"] = {"trust_domain": "cluster.local", "ca_cert": f"{CA}/root-cert.pem",
                           "ca_key": f"{CA}/ca-key.pem", "trust_bundle": f"{CA}/root-cert.pem"}
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        hm("lab", "agent", "--name", name, "node-0", "stop", check=True)
        hm("lab", "agent", "--name", name, "node-0", "start", check=True)
        # node-1: no hostmesh (agent stopped, its capture removed); ztunnel runs inside the
        # client pod's namespace, as a sidecar would: it owns the pod's :15008, so HBONE to
        # the pod arrives on the pod's own address (ztunnel checks it against :authority),
        # and the pod's outbound TCP is redirected to its :15001 (ztunnel's own sockets
        # carry mark 1337 and are left alone)
        hm("lab", "agent", "--name", name, "node-1", "stop", check=True)
        n1, client = lab.node(1)["netns"], lab.pod("client")
        ns_run(n1, "nft", "delete", "table", "inet", "hostmesh")
        for argv in (["-N", CHAIN],
                     ["-A", CHAIN, "-p", "tcp", "-m", "mark", "--mark", "1337", "-j", "RETURN"],
                     ["-A", CHAIN, "-p", "tcp", "-d", "127.0.0.0/8", "-j", "RETURN"],
                     ["-A", CHAIN, "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15001"],
                     ["-I", "OUTPUT", "-j", CHAIN]):
            r = ns_run(client["netns"], "iptables", "-t", "nat", *argv)
            assert r.returncode == 0, r.stderr
        xds = tmp / "local.yaml"
        xds.write_text(yaml.safe_dump(zt.local_xds(lab.status["pods"]), sort_keys=False))
        # PACKET_MARK: its own sockets carry 1337 (dedicated mode sets none by default)
        env = {**os.environ, **zt.environment(client, "node-1", xds), "RUST_LOG": "info", "PACKET_MARK": "1337"}
        lab.zt_log = tmp / "ztunnel.log"
        log = open(lab.zt_log, "wb")
        import subprocess

        p = subprocess.Popen(["ip", "netns", "exec", client["netns"], BIN], env=env, stdout=log,
                             stderr=subprocess.STDOUT)
        lab.procs.append(p)
        wait_listen(client["netns"], 15008, host=client["ip"], timeout=20)
        wait_listen(client["netns"], 15001, timeout=20)
        lab.serve_http("web", 8080)
        lab.serve_http("client", 8080)
        yield lab


def curl(lab, frm: str, to: str, path: str = "/") -> tuple[int, str]:
    r = ns_run(lab.pod(frm)["netns"], "curl", "-s", "-m", "10", f"http://{lab.pod(to)['ip']}:8080{path}")
    return r.returncode, r.stdout


def engine(lab) -> dict:
    return lab.admin(0, "GET", "/v1/stats")[1]["engine"]


def test_ztunnel_client_to_hostmesh_server_over_one_tls_connection(lab):
    before = engine(lab)
    for i in range(5):
        rc, out = curl(lab, "client", "web", f"/zt-{i}")
        assert rc == 0, (rc, out, lab.zt_log.read_text()[-2000:])
        assert json.loads(out)["path"] == f"/zt-{i}"
    after = engine(lab)
    assert after["hbone_streams_opened"] - before.get("hbone_streams_opened", 0) == 5
    # ztunnel pools: five connections, at most one new TLS connection to the web pod
    assert after["server_handshakes"] - before.get("server_handshakes", 0) <= 1, (before, after)
    time.sleep(1.3)
    inn = [x for x in lab.access_log(0) if x["type"] == "connection" and x["direction"] == "inbound"
           and x["dst"]["ip"] == lab.pod("web")["ip"]]
    assert inn and inn[-1]["mode"] == "tunnel"
    assert inn[-1]["src"]["principal"] == "spiffe://cluster.local/ns/front/sa/client-sa"


def test_hostmesh_client_to_ztunnel_server(lab):
    before = engine(lab)
    rc, out = curl(lab, "web", "client", "/from-hostmesh")
    assert rc == 0, (rc, out, lab.zt_log.read_text()[-2000:])
    assert json.loads(out)["path"] == "/from-hostmesh"
    after = engine(lab)
    assert after["hbone_connections_opened"] - before.get("hbone_connections_opened", 0) == 1
    # ztunnel's inbound access log names hostmesh's verified identity
    text = lab.zt_log.read_text(errors="replace")
    assert re.search(r'src\.identity="spiffe://cluster\.local/ns/shop/sa/web-sa"', text), text[-2000:]


def test_a_hostmesh_deny_reaches_ztunnel_as_401(lab):
    status, body = lab.admin(0, "PUT", "/v1/policies", DENY_CLIENT)
    assert status == 200, body
    try:
        before = lab.stats(0).get("tunnel_status_401", 0)
        rc, out = curl(lab, "client", "web", "/denied")
        assert out == "" and rc != 0
        wait_for(lambda: lab.stats(0).get("tunnel_status_401", 0) == before + 1)
    finally:
        lab.admin(0, "DELETE", "/v1/policies/shop/no-client")
