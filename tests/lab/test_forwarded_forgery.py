"""A misbehaving node forges ``Forwarded``: from node-1's namespace, a raw TLS client
with a real SVID for front/client-sa (minted by node-1's intermediate of the lab CA)
opens a tunnel to node-0 and claims the address of a pod in namespace `other`. The
destination judges it by the verified identity (front), never by the claimed pod."""

import pytest

from tests.lab.conftest import PY, lab_up, ns_run, wait_for

TOPOLOGY = """\
nodes: 2
pods:
  - {name: web, namespace: shop, service_account: web-sa, labels: {app: web}, node: 0, http_ports: [8080]}
  - {name: client, namespace: front, service_account: client-sa, labels: {app: client}, node: 1}
  - {name: other, namespace: other, service_account: other-sa, labels: {app: other}, node: 1}
"""
ALLOW_FROM = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: only, namespace: shop}}
spec:
  rules:
    - from: [{{source: {{namespaces: ["{ns}"]}}}}]
"""
FORGE = """
import datetime, socket, ssl, sys, tempfile
from agent.identity import ca
from agent.identity.spiffe import sni_for
labdir, node0, web_ip, claimed = sys.argv[1:5]
inter = labdir + "/ca/nodes/node-1/"
icert = ca.load_certs(open(inter + "cert.pem", "rb").read())[0]
ikey = ca.load_key(open(inter + "key.pem", "rb").read())
leaf, key = ca.make_svid("spiffe://cluster.local/ns/front/sa/client-sa", icert, ikey,
                         datetime.datetime.now(datetime.timezone.utc))
d = tempfile.mkdtemp()
open(d + "/c.pem", "wb").write(ca.cert_pem(leaf, icert))
open(d + "/k.pem", "wb").write(ca.key_pem(key))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.load_verify_locations(labdir + "/ca/bundle.pem")
ctx.load_cert_chain(d + "/c.pem", d + "/k.pem")
t = ctx.wrap_socket(socket.create_connection((node0, 15008), 5), server_hostname=sni_for("shop", "web-sa", "cluster.local"))
t.sendall(("CONNECT %s:8080 HTTP/1.1\\r\\nHost: %s:8080\\r\\nForwarded: for=\\"%s:4444\\"\\r\\n\\r\\n"
           % (web_ip, web_ip, claimed)).encode())
t.settimeout(5)
head = t.recv(4096).decode("latin-1").split("\\r\\n")[0]
if " 200 " in head + " ":
    t.sendall(("GET /who HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n\\r\\n").encode())
    out = b""
    try:
        while (x := t.recv(65536)):
            out += x
    except (ssl.SSLError, OSError):
        pass
    head += " | " + out.decode("latin-1").split("\\r\\n")[0]
print(head)
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with lab_up("aforge", topology=TOPOLOGY, tmp=tmp_path_factory.mktemp("aforge")) as lab:
        lab.serve_http("web", 8080)
        yield lab


def _forge(lab) -> str:
    r = ns_run(lab.node(1)["netns"], PY, "-c", FORGE, f"/run/hostmesh/lab/{lab.name}", lab.node(0)["address"],
               lab.pod("web")["ip"], lab.pod("other")["ip"], timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_forged_forwarded_is_judged_by_the_verified_identity(lab):
    before = lab.stats(0).get("tunnel_forwarded_mismatch", 0)
    # ALLOW only namespace `other`: the claimed pod's namespace does not let front in
    lab.apply(ALLOW_FROM.format(ns="other"))
    assert _forge(lab).startswith("HTTP/1.1 403"), "the claimed namespace was believed"
    # ALLOW front: the verified identity is front, so it passes (and the lie is counted)
    lab.apply(ALLOW_FROM.format(ns="front"))
    out = _forge(lab)
    assert out.startswith("HTTP/1.1 200") and "| HTTP/1.1 200" in out, out
    assert lab.stats(0).get("tunnel_forwarded_mismatch", 0) == before + 2
    # the real client pod, through its own node's agent: believed, keeps its address
    r = ns_run(lab.pod("client")["netns"], "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
               f"http://{lab.pod('web')['ip']}:8080/")
    assert r.stdout == "200" and lab.stats(0).get("tunnel_forwarded_mismatch", 0) == before + 2
    # the record names the verified principal, not the claimed pod, and not its address
    def recs():
        return [r for r in lab.access_log(0) if r.get("type") == "connection" and r.get("direction") == "inbound"
                and r["src"].get("principal") == "spiffe://cluster.local/ns/front/sa/client-sa"]

    wait_for(lambda: len(recs()) >= 2, 10)
    recs = recs()
    assert recs and all(r["src"]["ip"] != lab.pod("other")["ip"] for r in recs), recs[-3:]
    assert all(r["src"].get("workload") != "other" for r in recs)
