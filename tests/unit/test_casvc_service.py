"""The CA service end to end on loopback (agent.casvc.server) with the agent's real
gRPC client (agent.identity.caclient): issued and refused certificates, audit lines,
counters, a malformed request, the wire bytes of Istio's messages, reload on change."""

import json
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from agent.casvc import protocol
from agent.casvc.server import CaService, build_server
from agent.identity import ca, store
from agent.identity.caclient import CaClient, CaError, CaTarget, check_response

TD = "cluster.local"
WEB = f"spiffe://{TD}/ns/shop/sa/web"
DB = f"spiffe://{TD}/ns/data/sa/db"

CONFIG = """\
listen: 127.0.0.1:0
signing: {{cert: {d}/root.pem, key: {d}/root.key, bundle: {d}/bundle.pem}}
server_names: [127.0.0.1]
audit_log: {audit}
max_ttl_s: 7200
default_ttl_s: 3600
nodes:
  node-0: [{web}]
  node-1: [{db}]
"""


@pytest.fixture
def service(tmp_path):
    d = tmp_path / "ca"
    store.init_dir(d, TD)
    for n in ("node-0", "node-1", "node-9"):
        store.issue_node_credential(d, n)
    cfg = tmp_path / "ca.yaml"
    cfg.write_text(CONFIG.format(d=d, audit=tmp_path / "audit.jsonl", web=WEB, db=DB))
    svc = CaService(str(cfg))
    server, port = build_server(svc)
    server.start()
    yield svc, d, port, tmp_path
    server.stop(0).wait()


def client(d: Path, port: int, node: str | None) -> CaClient:
    cred = d / "nodes" / (node or "x") / "credential"
    return CaClient(CaTarget(f"127.0.0.1:{port}", (d / "bundle.pem").read_bytes(),
                             (cred / "cert.pem").read_bytes() if node else None,
                             (cred / "key.pem").read_bytes() if node else None))


def audit(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


def test_wire_bytes_are_istios_field_numbers():
    req = protocol.make_request("CSR", 3600, WEB)
    raw = req.SerializeToString()
    # csr = field 1 (tag 0x0a), validity_duration = field 3 varint (0x18, 3600 = 0x90 0x1c),
    # metadata = field 4 (0x22): Struct{fields{"ImpersonatedIdentity": string_value}}
    assert raw.startswith(b"\x0a\x03CSR\x18\x90\x1c\x22")
    assert b"ImpersonatedIdentity" in raw and WEB.encode() in raw
    assert protocol.Response(cert_chain=["a", "b"]).SerializeToString() == b"\x0a\x01a\x0a\x01b"
    assert protocol.METHOD == "/istio.v1.auth.IstioCertificateService/CreateCertificate"


def test_node_gets_its_own_identity_and_not_another_nodes(service):
    svc, d, port, tmp = service
    chain_pem, key_pem, leaf = client(d, port, "node-0").fetch(WEB, 3600)
    certs = ca.load_certs(chain_pem)
    assert certs[0] == leaf and len(certs) == 1  # signed by the root itself: no intermediate
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier) == [WEB]
    assert ca.load_key(key_pem).public_key().public_numbers() == leaf.public_key().public_numbers()
    leaf.verify_directly_issued_by(ca.load_certs((d / "root.pem").read_bytes())[0])
    with pytest.raises(CaError) as e:
        client(d, port, "node-0").fetch(DB, 3600)
    assert e.value.code == "PERMISSION_DENIED" and "identity_not_on_node" in str(e.value)
    with pytest.raises(CaError) as e:
        client(d, port, "node-9").fetch(WEB, 3600)
    assert e.value.code == "UNAUTHENTICATED" and "unknown_node" in str(e.value)
    with pytest.raises(CaError) as e:
        client(d, port, "node-0").fetch(WEB, 7201)
    assert e.value.code == "INVALID_ARGUMENT" and "validity_too_long" in str(e.value)
    lines = audit(tmp)
    assert [(x["verdict"], x.get("reason")) for x in lines] == [
        ("issued", None), ("refused", "identity_not_on_node"), ("refused", "unknown_node"),
        ("refused", "validity_too_long")]
    assert lines[0]["identity"] == WEB and lines[0]["serial"] == format(leaf.serial_number, "x")
    assert svc.counters == {"issued": 1, "refused_identity_not_on_node": 1, "refused_unknown_node": 1,
                            "refused_validity_too_long": 1}
    assert 'hostmesh_ca_events_total{event="issued"} 1' in svc.metrics_text()


def test_malformed_request_is_refused_with_its_reason(service):
    svc, d, port, tmp = service
    cred = d / "nodes" / "node-0" / "credential"
    creds = grpc.ssl_channel_credentials((d / "bundle.pem").read_bytes(), (cred / "key.pem").read_bytes(),
                                         (cred / "cert.pem").read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        call = ch.unary_unary(protocol.METHOD)  # raw bytes both ways
        with pytest.raises(grpc.RpcError) as e:
            call(b"\xff\xff\xff", timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("malformed_request: ")
    assert svc.counters == {"refused_malformed_request": 1}


def test_a_call_without_a_node_credential_is_unauthenticated(service):
    svc, d, port, tmp = service
    with pytest.raises(CaError) as e:
        client(d, port, None).fetch(WEB, 600)
    assert e.value.code == "UNAUTHENTICATED" and "no_credential" in str(e.value)
    assert svc.counters == {"refused_no_credential": 1}
    assert audit(tmp)[-1]["reason"] == "no_credential"


def test_expired_and_foreign_credentials_are_refused_in_the_handshake_audited_and_counted(service):
    """OpenSSL refuses the chain in the handshake (the client gets the TLS alert); the
    front reports it with a named reason, so the audit log and counters see it."""
    svc, d, port, tmp = service
    root = ca.load_certs((d / "root.pem").read_bytes())[0]
    root_key = ca.load_key((d / "root.key").read_bytes())
    other, other_key = ca.make_root(TD, ca.dt.datetime.now(ca.dt.UTC))
    now = ca.dt.datetime.now(ca.dt.UTC)
    expired, k1 = ca.make_node_credential(root, root_key, "node-0", now - ca.dt.timedelta(days=2),
                                          ca.dt.timedelta(days=1))
    foreign, k2 = ca.make_node_credential(other, other_key, "node-0", now)
    for cert, key in ((expired, k1), (foreign, k2)):
        c = CaClient(CaTarget(f"127.0.0.1:{port}", (d / "bundle.pem").read_bytes(), ca.cert_pem(cert), ca.key_pem(key)))
        with pytest.raises(CaError) as e:
            c.fetch(WEB, 600)
        assert e.value.code == "UNAVAILABLE"
        assert ("the CA service refuses it" in str(e.value)) == (cert is expired)  # the agent's own hint
        c.close()
    deadline = time.monotonic() + 5
    while len(svc.counters) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert svc.counters == {"refused_credential_expired": 1, "refused_credential_untrusted": 1}
    reasons = {a["reason"]: a for a in audit(tmp)}
    assert set(reasons) == {"credential_expired", "credential_untrusted"}
    assert "expired" in reasons["credential_expired"]["message"]
    assert reasons["credential_untrusted"]["code"] == "UNAUTHENTICATED"


def test_allow_list_change_is_picked_up_and_a_bad_file_keeps_the_old(service):
    svc, d, port, tmp = service
    cfg = tmp / "ca.yaml"
    # web moves from node-0 to node-1
    cfg.write_text(cfg.read_text().replace(f"node-0: [{WEB}]", "node-0: []").replace(f"node-1: [{DB}]",
                                                                                     f"node-1: [{DB}, {WEB}]"))
    time.sleep(0.01)
    assert svc.changed_on_disk() and svc.reload("test")
    assert client(d, port, "node-1").fetch(WEB, 600)[2]
    with pytest.raises(CaError, match="identity_not_on_node"):
        client(d, port, "node-0").fetch(WEB, 600)
    good = cfg.read_text()
    cfg.write_text(good + "  node-2: [not-a-spiffe-id]\n")
    assert not svc.reload("test") and svc.counters["reload_failures"] == 1
    assert client(d, port, "node-1").fetch(WEB, 600)[2]  # what was in force still is


def test_the_client_refuses_an_answer_for_another_identity_or_key():
    root, key = ca.make_root(TD, ca.dt.datetime.now(ca.dt.UTC))
    leaf, leaf_key = ca.make_svid(DB, root, key, ca.dt.datetime.now(ca.dt.UTC))
    chain = [ca.cert_pem(leaf).decode(), ca.cert_pem(root).decode()]
    with pytest.raises(ValueError, match="not spiffe://cluster.local/ns/shop/sa/web"):
        check_response(chain, WEB, leaf_key.public_key())
    with pytest.raises(ValueError, match="another key"):
        check_response(chain, DB, ca.new_key().public_key())
    got, pem = check_response(chain, DB, leaf_key.public_key())
    assert got == leaf and ca.load_certs(pem) == [leaf]  # the root stays out of the presented chain


def fetch_eventually(c: CaClient, sid: str, within_s: float, why: str) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            c.fetch(sid, 600)
            return
        except CaError:
            assert time.monotonic() < deadline, why
            time.sleep(0.1)


def test_ca_serve_reloads_on_sighup_and_stops_on_sigterm(tmp_path):
    import signal
    import socket
    import subprocess
    import sys

    d = tmp_path / "ca"
    store.init_dir(d, TD)
    store.issue_node_credential(d, "node-0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "ca.yaml"
    text = CONFIG.format(d=d, audit=tmp_path / "audit.jsonl", web=WEB, db=DB).replace(
        "127.0.0.1:0", f"127.0.0.1:{port}") + "watch_interval_s: 3600\n"  # only SIGHUP reloads here
    cfg.write_text(text)
    p = subprocess.Popen([sys.executable, "-m", "agent", "--log-format", "json", "ca", "serve", "--config", str(cfg)],
                         stderr=subprocess.PIPE, text=True)
    try:
        c = client(d, port, "node-0")
        fetch_eventually(c, WEB, 20, "ca serve did not start")
        with pytest.raises(CaError, match="identity_not_on_node"):
            c.fetch(DB, 600)
        cfg.write_text(text.replace(f"node-0: [{WEB}]", f"node-0: [{WEB}, {DB}]"))
        p.send_signal(signal.SIGHUP)
        fetch_eventually(c, DB, 10, "not reloaded on SIGHUP")
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
    finally:
        p.kill()
    logs = [json.loads(line) for line in p.stderr.read().splitlines() if line.startswith("{")]
    assert any(x["msg"] == "CA configuration reloaded" and x["why"] == "SIGHUP" for x in logs), logs


def test_calls_beyond_max_concurrent_are_refused_at_once(tmp_path, monkeypatch):
    import threading

    from agent.casvc.authority import Authority

    d = tmp_path / "ca"
    store.init_dir(d, TD)
    store.issue_node_credential(d, "node-0")
    cfg = tmp_path / "ca.yaml"
    cfg.write_text(CONFIG.format(d=d, audit=tmp_path / "audit.jsonl", web=WEB, db=DB) + "max_concurrent: 1\n")
    release, entered = threading.Event(), threading.Event()
    real_sign = Authority.sign

    def slow_sign(self, d_, now):
        entered.set()
        release.wait(10)
        return real_sign(self, d_, now)

    monkeypatch.setattr(Authority, "sign", slow_sign)
    svc = CaService(str(cfg))
    server, port = build_server(svc)
    server.start()
    try:
        results: list = []

        def call():
            try:
                client(d, port, "node-0").fetch(WEB, 600)
                results.append("ok")
            except CaError as e:
                results.append(e.code)

        first = threading.Thread(target=call)
        first.start()
        assert entered.wait(10)  # the first call is now held in the signer
        call()
        assert results == ["RESOURCE_EXHAUSTED"]
        release.set()
        first.join(10)
        assert results == ["RESOURCE_EXHAUSTED", "ok"]
    finally:
        release.set()
        server.stop(0).wait()
