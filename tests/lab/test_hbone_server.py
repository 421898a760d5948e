"""HBONE interoperability, hostmesh as the CLIENT: Python's ``h2`` plays ztunnel's
in-pod server (tests/lab/hbone_peer.py). The lab runs with ``--capture-fail open`` and
node-1's agent stopped, so a TCP to web's :15008 reaches web's own namespace, where
the peer listens presenting web's SVID (minted from node-1's intermediate) and relays
each CONNECT stream to the app. Connections from the client pod on node-0 go through
node-0's agent (native core) and must arrive over HBONE: ALPN h2, several connections
on one TLS connection, the outer TCP source the client pod's own address, and the
:authority, forwarded and baggage ztunnel reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.lab import hbone_peer as hp
from tests.lab.conftest import PY, ns_py, wait_for, wait_listen

TOPOLOGY = """\
nodes: 2
pods:
  - {name: client, namespace: front, service_account: client-sa, labels: {app: client, version: v3}, node: 0}
  - {name: web, namespace: shop, service_account: web-sa, labels: {app: web}, node: 1}
"""
APP = 7000
WEB_ID = "spiffe://cluster.local/ns/shop/sa/web-sa"
CLIENT_ID = "spiffe://cluster.local/ns/front/sa/client-sa"
# N connections at once from the client pod, each mode "a" (send, half-close, read the answer)
DIAL = """
import hashlib, json, random, socket, sys, threading
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = [None] * n
def one(i):
    data = random.Random(i).randbytes(50_000 + i)
    s = socket.create_connection((host, port), 10)
    s.sendall(b"a %d %d\\n" % (len(data), i) + data)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while (x := s.recv(65536)):
        got += x
    out[i] = got.decode() == "%d %s\\n" % (len(data), hashlib.sha256(data).hexdigest())
ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
[t.start() for t in ts]
[t.join() for t in ts]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("khbsrv")
    with hp.server_lab("khbsrv", TOPOLOGY, tmp, WEB_ID) as lab:
        labdir, chain, key = f"/run/hostmesh/lab/{lab.name}", lab.chain, lab.key
        web = lab.pod("web")["netns"]
        lab.spawn(web, PY, "-m", "tests.lab.hbone_peer", "app", json.dumps({"port": APP, "log": f"{labdir}/app.log"}))
        lab.spawn(web, PY, "-m", "tests.lab.hbone_peer", "server",
                  json.dumps({"port": 15008, "chain": chain, "key": key, "bundle": f"{labdir}/ca/bundle.pem",
                              "log": lab.peer_log}))
        wait_listen(web, APP)
        wait_listen(web, 15008)
        yield lab


def peer_log(lab) -> list[dict]:
    return [json.loads(x) for x in Path(lab.peer_log).read_text().splitlines() if x.strip()]


def test_the_native_client_speaks_hbone_to_a_ztunnel_like_server(lab):
    web, client = lab.pod("web")["ip"], lab.pod("client")["ip"]
    r = ns_py(lab.pod("client")["netns"], f"import sys; sys.argv=['', {web!r}, {APP}, 6]\n" + DIAL, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout) == [True] * 6  # byte-exact both ways, half-close both ways
    wait_for(lambda: len([e for e in peer_log(lab) if "stream" in e]) >= 6, 10)
    log = peer_log(lab)
    conns = [e for e in log if "alpn" in e]
    streams = [e for e in log if "stream" in e]
    # one TLS connection (ALPN h2) from the client pod's own address, with the client's SVID
    assert len(conns) == 1, conns
    assert (conns[0]["alpn"], conns[0]["client_uri"], conns[0]["peer"][0]) == ("h2", CLIENT_ID, client)
    assert {s["conn"] for s in streams} == {conns[0]["conn"]} and len(streams) == 6
    for s in streams:
        assert (s["method"], s["authority"], s["peer"][0]) == ("CONNECT", f"{web}:{APP}", client), s
        assert s["forwarded"].startswith(f'for="{client}:'), s
        assert s["baggage"] == ("k8s.cluster.name=Kubernetes,k8s.namespace.name=front,k8s.pod.name=client,"
                                "service.name=client,service.version=v3"), s
        version, trace, span, flags = s["traceparent"].split("-")
        assert (version, len(trace), len(span), flags) == ("00", 32, 16, "01"), s
    e = lab.admin(0, "GET", "/v1/stats")[1]["engine"]
    assert e["hbone_connections_opened"] >= 1 and e["hbone_streams_opened"] >= 6, e


def test_a_refusing_server_is_a_failed_connection_not_a_retry_storm(lab):
    web = lab.pod("web")["ip"]
    before = len([e for e in peer_log(lab) if "stream" in e])
    # nothing listens on 7999 in the pod: the peer answers 503, the client sees its connection end
    r = ns_py(lab.pod("client")["netns"],
              f"import socket\ns=socket.create_connection(('{web}', 7999), 10)\ns.settimeout(10)\n"
              "try:\n    print(repr(s.recv(10)))\nexcept OSError as e:\n    print(type(e).__name__)\n", timeout=30)
    assert r.stdout.strip() in ("b''", "ConnectionResetError"), r
    wait_for(lambda: len([e for e in peer_log(lab) if "stream" in e]) == before + 1, 10)
    wait_for(lambda: [x for x in lab.access_log(0) if x.get("type") == "connection" and x["dst"].get("port") == 7999],
             10)
    recs = [x for x in lab.access_log(0) if x.get("type") == "connection" and x["dst"].get("port") == 7999]
    assert recs and "503" in (recs[-1].get("reason") or ""), recs[-1:]
