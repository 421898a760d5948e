"""HBONE interoperability with an HTTP/2 implementation other than the core's: Python's
``h2`` plays ztunnel (tests/lab/hbone_peer.py) against hostmesh agents on the native
engine, in a real lab.

As a CLIENT: from node-1's namespace, with an SVID for front/client-sa minted from the
lab CA's node-1 intermediate, ONE TLS connection (TLS 1.3, ALPN h2, no SNI) to the
web pod's address :15008 on node-0 (captured by node-0's agent): it must present web's
SVID; several concurrent CONNECT streams carry bytes byte-exact both ways and
half-close both ways; a denied policy is 401 with x-hostmesh-policy, a closed port
503, an authority naming another pod 400 — all on that one connection.
Between hostmesh agents HBONE is the default; ``tunnel_protocol: connect`` still works,
and the node address :15008 keeps answering HTTP/1.1 CONNECT."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.lab import hbone_peer as hp
from tests.lab.conftest import PY, hm, lab_up, ns_run, wait_for, wait_listen

TOPOLOGY = """\
nodes: 2
pods:
  - {name: web, namespace: shop, service_account: web-sa, labels: {app: web}, node: 0}
  - {name: db, namespace: data, service_account: db-sa, labels: {app: db}, node: 0}
  - {name: client, namespace: front, service_account: client-sa, labels: {app: client}, node: 1}
"""
APP = 7000
DENY_FRONT = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-front, namespace: shop}
spec:
  action: DENY
  rules:
    - from: [{source: {namespaces: ["front"]}}]
      to: [{operation: {ports: ["7000"]}}]
"""
CLIENT_ID = "spiffe://cluster.local/ns/front/sa/client-sa"
WEB_ID = "spiffe://cluster.local/ns/shop/sa/web-sa"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("khbone")
    with lab_up("khbone", topology=TOPOLOGY, tmp=tmp) as lab:
        lab.tmp = tmp
        lab.app_log = f"/run/hostmesh/lab/{lab.name}/app.log"
        Path(lab.app_log).write_text("")
        lab.spawn(lab.pod("web")["netns"], PY, "-m", "tests.lab.hbone_peer", "app",
                  json.dumps({"port": APP, "log": lab.app_log}))
        wait_listen(lab.pod("web")["netns"], APP)
        lab.serve_http("web", 8080)
        yield lab


def peer_client(lab, streams, node=1, identity=CLIENT_ID, to=None) -> dict:
    labdir = f"/run/hostmesh/lab/{lab.name}"
    chain, key = hp.mint(labdir, f"node-{node}", identity)
    spec = {"connect": to or [lab.pod("web")["ip"], 15008], "chain": chain, "key": key,
            "bundle": f"{labdir}/ca/bundle.pem", "streams": streams}
    r = ns_run(lab.node(node)["netns"], PY, "-m", "tests.lab.hbone_peer", "client", json.dumps(spec), timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def engine(lab, node: int) -> dict:
    return lab.admin(node, "GET", "/v1/stats")[1]["engine"]


def test_a_ztunnel_like_client_multiplexes_streams_on_one_connection(lab):
    web = lab.pod("web")["ip"]
    before = engine(lab, 0)
    streams = [{"authority": f"{web}:{APP}", "mode": "a", "n": 200_000 + 7 * i, "seed": i,
                "headers": [["forwarded", f'for="{lab.node(1)["address"]}:4000{i}"'],
                            ["baggage", "k8s.namespace.name=front,k8s.deployment.name=peer,service.name=peer"]]}
               for i in range(4)]
    # the app speaks first, 3 MiB, and half-closes; the client sends only after that END_STREAM
    streams.append({"authority": f"{web}:{APP}", "mode": "b", "n": 3 * hp.MIB, "seed": 40, "then": 123_457})
    out = peer_client(lab, streams)
    # the server presented the destination POD's SVID, over TLS 1.3 with ALPN h2
    assert (out["peer_uri"], out["alpn"], out["version"]) == (WEB_ID, "h2", "TLSv1.3")
    for i, s in enumerate(out["streams"][:4]):
        n = 200_000 + 7 * i
        # every byte arrived (the app read to the FIN our END_STREAM became) and its answer
        # came back, then END_STREAM (the app's close)
        assert (s["status"], s["ended"], s["reset"]) == (200, True, None), s
        assert s["received_head"] == f"{n} {hp.sha(hp.pattern(n, i))}\n", s
    b = out["streams"][4]
    assert (b["status"], b["ended"], b["received_len"]) == (200, True, 3 * hp.MIB), b
    assert b["received_sha"] == hp.sha(hp.pattern(3 * hp.MIB, 40))

    def logged():
        return [json.loads(x) for x in Path(lab.app_log).read_text().splitlines() if x.strip()]
    wait_for(lambda: any(r["seed"] == 40 for r in logged()), 10)
    rec = next(r for r in logged() if r["seed"] == 40)
    assert (rec["got_len"], rec["got_sha"]) == (123_457, hp.sha(hp.pattern(123_457, 41)))
    after = engine(lab, 0)
    # five streams, one TLS connection carrying them
    assert after["hbone_streams_opened"] - before.get("hbone_streams_opened", 0) == 5, after
    assert after["hbone_connections_opened"] - before.get("hbone_connections_opened", 0) == 1, after


def test_ipv6_reaches_the_pod_address_listener_with_the_pods_svid(lab):
    web6 = lab.pod("web")["ip6"]
    out = peer_client(lab, [{"authority": f"[{web6}]:{APP}", "mode": "a", "n": 70_000, "seed": 6}], to=[web6, 15008])
    assert (out["peer_uri"], out["alpn"]) == (WEB_ID, "h2")
    s = out["streams"][0]
    assert (s["status"], s["received_head"]) == (200, f"70000 {hp.sha(hp.pattern(70_000, 6))}\n"), s
    # the v4 address in the authority of a connection made to the v6 address: another address, 400
    out = peer_client(lab, [{"authority": f"{lab.pod('web')['ip']}:{APP}", "mode": "a", "n": 1}], to=[web6, 15008])
    assert out["streams"][0]["status"] == 400


def test_refusals_are_ztunnels_answers_on_the_same_connection(lab):
    web, db = lab.pod("web")["ip"], lab.pod("db")["ip"]
    lab.apply(DENY_FRONT)
    try:
        out = peer_client(lab, [
            {"authority": f"{web}:{APP}", "mode": "a", "n": 10},   # denied by policy
            {"authority": f"{web}:7999", "mode": "a", "n": 10},    # allowed, but nothing listens
            {"authority": f"{db}:{APP}", "mode": "a", "n": 10},    # another pod than the one dialled
            {"authority": "not-an-address", "mode": "a", "n": 10},  # malformed
        ])
    finally:
        lab.clear_policies()
    statuses = [s["status"] for s in out["streams"]]
    assert statuses == [401, 503, 400, 400], out["streams"]
    assert out["streams"][0]["headers"].get("x-hostmesh-policy") == "shop/no-front"
    assert all(s["ended"] for s in out["streams"])
    # the policy gone, the same peer gets through again
    ok = peer_client(lab, [{"authority": f"{web}:{APP}", "mode": "a", "n": 5, "seed": 9}])["streams"][0]
    assert ok["status"] == 200 and ok["received_head"] == f"5 {hp.sha(hp.pattern(5, 9))}\n"


def test_hbone_stream_records_are_mutual_tls_with_the_outer_source(lab):
    web = lab.pod("web")["ip"]
    before = lab.stats(0).get("tunnel_source_mismatch", 0)
    # forwarded claims the client pod's address: ztunnel's rule, the outer peer wins
    forged = [["forwarded", f'for="{lab.pod("client")["ip"]}:5555"'],
              ["baggage", "k8s.namespace.name=front,k8s.deployment.name=peer2,service.name=peersvc,service.version=v9"]]
    out = peer_client(lab, [{"authority": f"{web}:{APP}", "mode": "a", "n": 1000, "seed": 77, "headers": forged}])
    assert out["streams"][0]["status"] == 200
    assert lab.stats(0).get("tunnel_source_mismatch", 0) == before + 1

    def recs():
        return [r for r in lab.access_log(0) if r.get("type") == "connection" and r.get("direction") == "inbound"
                and r["dst"].get("port") == APP and r["src"].get("principal") == CLIENT_ID]
    # this test's stream is the one its baggage names
    wait_for(lambda: [r for r in recs() if r["src"].get("workload") == "peer2"], 10)
    mine = [r for r in recs() if r["src"].get("workload") == "peer2"]
    # the source is the outer TCP peer (node-1's address here), never the forwarded claim
    assert [r["src"]["ip"] for r in mine] == [lab.node(1)["address"]], mine
    assert {r["src"]["ip"] for r in recs()} <= {lab.node(1)["address"], lab.node(1)["address6"]}
    assert all(r["src"].get("workload") != "client" for r in recs())
    metrics = ns_run(lab.node(0)["netns"], "curl", "-s", "http://127.0.0.1:15020/metrics").stdout
    opened = [line for line in metrics.splitlines() if line.startswith("istio_tcp_connections_opened_total{")
              and 'destination_workload="web"' in line and "source_principal=\"spiffe://cluster.local/ns/front" in line]
    assert opened and all('connection_security_policy="mutual_tls"' in line for line in opened), opened
    # a source this node does not know is labelled from its baggage, as ztunnel does
    assert any('source_workload="peer2"' in line and 'source_canonical_service="peersvc"' in line
               and 'source_canonical_revision="v9"' in line for line in opened), opened


def test_between_agents_hbone_is_the_default(lab):
    web = lab.pod("web")["ip"]
    before = engine(lab, 0).get("hbone_streams_opened", 0)
    client_before = engine(lab, 1).get("hbone_connections_opened", 0)
    for _ in range(3):
        r = ns_run(lab.pod("client")["netns"], "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
                   f"http://{web}:8080/")
        assert r.stdout == "200", r
    assert engine(lab, 0)["hbone_streams_opened"] - before == 3
    # three connections, one pooled TLS connection from node-1's agent
    assert engine(lab, 1)["hbone_connections_opened"] - client_before == 1


def _set_tunnel_protocol(lab, protocol: str | None) -> None:
    for i in (0, 1):
        node = lab.node(i)["name"]
        path = Path(f"/run/hostmesh/lab/{lab.name}/{node}/config.yaml")
        cfg = yaml.safe_load(path.read_text())
        dp = cfg.setdefault("dataplane", {})
        if protocol is None:
            dp.pop("tunnel_protocol", None)
        else:
            dp["tunnel_protocol"] = protocol
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        hm("lab", "agent", "--name", lab.name, node, "stop", check=True)
        hm("lab", "agent", "--name", lab.name, node, "start", check=True)


def test_tunnel_protocol_connect_still_works(lab):
    web = lab.pod("web")["ip"]
    _set_tunnel_protocol(lab, "connect")
    try:
        for _ in range(2):
            r = ns_run(lab.pod("client")["netns"], "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
                       f"http://{web}:8080/")
            assert r.stdout == "200", r
        e = engine(lab, 0)
        assert e.get("hbone_streams_opened", 0) == 0, e
        # openssl s_client (no ALPN) on the node address: HTTP/1.1 CONNECT, as SPEC.md's tunnel
        labdir = f"/run/hostmesh/lab/{lab.name}"
        chain, key = hp.mint(labdir, "node-1", CLIENT_ID)
        req = f"CONNECT {web}:8080 HTTP/1.1\r\nHost: {web}:8080\r\n\r\nGET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
        r = ns_run(lab.node(1)["netns"], "openssl", "s_client", "-connect", f"{lab.node(0)['address']}:15008",
                   "-tls1_3", "-quiet", "-servername", "web-sa.shop.hostmesh.internal", "-cert", chain, "-cert_chain", chain, "-key", key,
                   "-CAfile", f"{labdir}/ca/bundle.pem", input=req, timeout=20)
        heads = [line.split()[:2] for line in r.stdout.splitlines() if line.startswith("HTTP/1.1 ")]
        # the CONNECT's 200, then the web pod's own 200 through the tunnel
        assert heads[:2] == [["HTTP/1.1", "200"], ["HTTP/1.1", "200"]], (r.stdout[:300], r.stderr[-500:])
    finally:
        _set_tunnel_protocol(lab, None)
    time.sleep(0.2)
