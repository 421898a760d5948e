"""The tunnel listener rejects every bad peer with a named reason, before any CONNECT
reaches a pod (issue 5). Certificates are minted by the test with the lab's node CA."""

import time
from pathlib import Path

from agent.identity import ca
from agent.identity.testing import Pki, bad_svids
from tests.lab.conftest import ns_py, ns_run

SNI = "web-sa.shop.hostmesh.internal"
CLIENT = """
import socket, ssl
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.load_cert_chain("{d}/c.pem", "{d}/k.pem")
s = ctx.wrap_socket(socket.create_connection(("{addr}", 15008), 5), server_hostname="{sni}")
s.settimeout(5)
s.sendall(b"CONNECT {target} HTTP/1.1\\r\\nhost: {target}\\r\\n\\r\\n")
try:
    print(s.recv(100)[:12])
except (ssl.SSLError, ConnectionResetError, OSError) as e:
    print("closed", type(e).__name__)
"""


def lab_pki(mesh, node: str = "node-1") -> Pki:
    d = Path(f"/run/hostmesh/lab/{mesh.name}/ca")
    root = ca.load_certs((d / "root.pem").read_bytes())[0]
    cert = ca.load_certs((d / "nodes" / node / "cert.pem").read_bytes())[0]
    key = ca.load_key((d / "nodes" / node / "key.pem").read_bytes())
    return Pki("cluster.local", root, ca.load_key((d / "root.key").read_bytes()), cert, key)


def attempt(mesh, tmp_path, chain: bytes, key: bytes, name: str) -> str:
    d = tmp_path / name
    d.mkdir()
    (d / "c.pem").write_bytes(chain)
    (d / "k.pem").write_bytes(key)
    code = CLIENT.format(d=d, addr=mesh.node(0)["address"], sni=SNI, target=f"{mesh.pod('web')['ip']}:8080")
    r = ns_py(mesh.status["external"]["netns"], code, timeout=30)
    return (r.stdout + r.stderr).strip()


def test_a_good_client_gets_through_then_each_bad_one_is_rejected_by_name(mesh, tmp_path):
    pki = lab_pki(mesh)
    good = pki.svid("spiffe://cluster.local/ns/front/sa/client-sa")
    assert attempt(mesh, tmp_path, *good, "good") == "b'HTTP/1.1 200'"
    before = mesh.stats(0)
    cases = bad_svids(pki, "spiffe://cluster.local/ns/front/sa/client-sa")
    for reason, (chain, key) in cases.items():
        out = attempt(mesh, tmp_path, chain, key, reason)
        assert "200" not in out, (reason, out)
    time.sleep(0.6)  # the agent copies the core's counters four times a second
    after = mesh.stats(0)
    for reason in ("expired", "not_yet_valid", "untrusted", "trust_domain_mismatch", "multiple_uri_sans",
                   "no_uri_san", "leaf_is_ca"):
        key = f"native_peer_rejected_{reason}"
        assert after.get(key, 0) > before.get(key, 0), (reason, {k: v for k, v in after.items() if "rejected" in k})


def test_client_without_certificate_and_tls12_and_garbage(mesh):
    ext = mesh.status["external"]["netns"]
    addr = mesh.node(0)["address"]
    before = mesh.stats(0)
    ns_run(ext, "openssl", "s_client", "-connect", f"{addr}:15008", "-tls1_3", "-servername", SNI, "-quiet",
           input="CONNECT x:1 HTTP/1.1\r\n\r\n", timeout=20)
    r = ns_run(ext, "openssl", "s_client", "-connect", f"{addr}:15008", "-tls1_2", "-servername", SNI,
               input="", timeout=20)
    assert r.returncode != 0
    ns_py(ext, f"import socket; s=socket.create_connection(('{addr}',15008),3); s.sendall(b'\\x00garbage'*10); "
               "s.settimeout(3)\ntry: s.recv(10)\nexcept OSError: pass")
    time.sleep(0.6)
    after = mesh.stats(0)
    for reason in ("no_certificate", "tls_version", "not_tls"):
        assert after.get(f"native_peer_rejected_{reason}", 0) > before.get(f"native_peer_rejected_{reason}", 0), (
            reason, {k: v for k, v in after.items() if "rejected" in k})


def test_slowloris_handshake_times_out(mesh):
    ext = mesh.status["external"]["netns"]
    addr = mesh.node(0)["address"]
    before = mesh.stats(0).get("native_peer_rejected_handshake_timeout", 0)
    # one byte per second of a TLS ClientHello: the agent gives up at the handshake timeout (5 s)
    r = ns_py(ext, f"""
import socket, time
s = socket.create_connection(('{addr}', 15008), 3)
t = time.monotonic()
try:
    for b in b'\\x16\\x03\\x01\\x02\\x00\\x01\\x00\\x01\\xfc\\x03\\x03':
        s.send(bytes([b])); time.sleep(1)
        if time.monotonic() - t > 9: break
    s.settimeout(3); print(repr(s.recv(10)))
except OSError as e:
    print('closed', round(time.monotonic() - t))
""", timeout=30)
    assert r.stdout.strip().startswith(("closed", "b''")), r.stdout + r.stderr
    assert mesh.stats(0).get("native_peer_rejected_handshake_timeout", 0) == before + 1


def test_underlay_carries_only_tls_never_the_marker(mesh, tmp_path):
    """tcpdump on node-0's underlay interface while a marker crosses the mesh: the bytes
    on the wire are TLS records; the marker never appears in clear."""
    import subprocess

    marker = b"HOSTMESH-MARKER-7f3a9c-" * 64
    pcap = tmp_path / "underlay.pcap"
    dump = subprocess.Popen(["ip", "netns", "exec", mesh.node(0)["netns"], "tcpdump", "--immediate-mode", "-Z", "root", "-i", "eth0", "-w", str(pcap),
                             "-U", "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    try:
        code = (f"import socket; s = socket.create_connection(('{mesh.pod('web')['ip']}', 8080), 5); "
                f"s.sendall(b'POST / HTTP/1.1\\r\\nhost: x\\r\\ncontent-length: {len(marker)}\\r\\n\\r\\n' + {marker!r}); "
                "s.settimeout(5); print(s.recv(12))")
        r = ns_py(mesh.pod("client")["netns"], code)
        assert "HTTP/1.1 200" in r.stdout, r.stdout + r.stderr
        time.sleep(0.5)
    finally:
        dump.terminate()
        dump.wait(timeout=10)
    raw = pcap.read_bytes()
    assert len(raw) > len(marker), f"tcpdump captured the transfer: {dump.stderr.read()}"
    assert b"\x17\x03\x03" in raw  # TLS application-data records on the wire
    assert b"HOSTMESH-MARKER" not in raw


def test_leaf_key_usage_and_bad_intermediates_are_refused_by_name_in_the_handshake(mesh, tmp_path):
    """Issue 15 items 6 and 9: a leaf with keyCertSign or cRLSign, or without
    digitalSignature, passes OpenSSL's chain check and is refused by the SPIFFE leaf
    rules (leaf_key_usage); a non-CA or keyCertSign-less intermediate is untrusted."""
    import datetime as dt

    from tests.unit.svid_vectors import Spec, mint

    pki = lab_pki(mesh)
    now = dt.datetime.now(dt.UTC)
    sid = "spiffe://cluster.local/ns/front/sa/client-sa"
    node = (pki.node, pki.node_key)
    bad_inter = mint(Spec("not a ca", at=now, ca=False, ku=("key_cert_sign",), uris=()), (pki.root, pki.root_key))
    no_sign = mint(Spec("no certsign", at=now, ca=True, ku=("crl_sign",)), (pki.root, pki.root_key))
    cases = {
        "leaf_key_usage": [(node, {"ku": ("digital_signature", "key_cert_sign")}),
                           (node, {"ku": ("digital_signature", "crl_sign")}), (node, {"ku": ("key_agreement",)})],
        "untrusted": [(bad_inter, {}), (no_sign, {})],
    }
    before = mesh.stats(0)
    for reason, variants in cases.items():
        for i, (issuer, kw) in enumerate(variants):
            leaf, key = mint(Spec("client", at=now, uris=(sid,), **kw), issuer)
            out = attempt(mesh, tmp_path, ca.cert_pem(leaf, issuer[0]), ca.key_pem(key), f"{reason}-{i}")
            assert "200" not in out, (reason, kw, out)
    time.sleep(0.6)
    after = mesh.stats(0)
    assert after.get("native_peer_rejected_leaf_key_usage", 0) - before.get("native_peer_rejected_leaf_key_usage", 0) == 3
    assert after.get("native_peer_rejected_untrusted", 0) - before.get("native_peer_rejected_untrusted", 0) == 2
    assert after.get("native_peer_rejected_leaf_is_ca", 0) == before.get("native_peer_rejected_leaf_is_ca", 0)
