"""The identity manager as a client of the CA service (identity.ca_address): keys made
here, SVIDs signed there, refusals and an unreachable CA keep what is in force, with
ztunnel's jittered backoff; the real service on loopback, the real gRPC client."""

import pytest
import trio

from agent.casvc.server import CaService, build_server
from agent.config import ConfigError, IdentityConfig, parse_config
from agent.identity import schedule, store
from agent.identity.manager import IdentityManager

TD = "cluster.local"
WEB = f"spiffe://{TD}/ns/shop/sa/web"


@pytest.fixture
def ca_service(tmp_path):
    d = tmp_path / "ca"
    store.init_dir(d, TD)
    store.issue_node_credential(d, "node-0")
    cfg = tmp_path / "ca.yaml"
    cfg.write_text(f"listen: 127.0.0.1:0\nsigning: {{cert: {d}/root.pem, key: {d}/root.key}}\n"
                   f"server_names: [127.0.0.1]\naudit_log: {tmp_path}/audit.jsonl\nnodes: {{node-0: [{WEB}]}}\n")
    svc = CaService(str(cfg))
    server, port = build_server(svc)
    server.start()
    yield svc, server, port, d
    server.stop(0).wait()


def identity_config(d, port) -> IdentityConfig:
    cred = d / "nodes" / "node-0" / "credential"
    return IdentityConfig(ca_address=f"127.0.0.1:{port}", ca_root=str(d / "root.pem"),
                          ca_credential_cert=str(cred / "cert.pem"), ca_credential_key=str(cred / "key.pem"),
                          ttl_s=600)


async def test_svids_come_from_the_ca_service_and_refusals_back_off(ca_service):
    svc, server, port, d = ca_service
    m = IdentityManager(identity_config(d, port), "node-0")
    assert m.issuer_key is None  # no signing key on this node
    async with trio.open_nursery() as n:
        await n.start(m.run)
        m.ensure("shop", "web")
        with trio.fail_after(10):
            await m.wait_first_certificates()
        web = {c["identity"]: c for c in m.status()}[WEB]
        assert web["state"] == "available" and web["issuer"] == f"ca-service 127.0.0.1:{port}"
        assert svc.counters["issued"] == 1
        assert m.get("shop", "web").spiffe_id == WEB

        m.ensure("data", "db")  # no workload of it on node-0 in the CA's view
        with trio.fail_after(10):
            while not m.counters.get("renewal_failures"):
                await trio.sleep(0.02)
        db = {c["identity"]: c for c in m.status()}["spiffe://cluster.local/ns/data/sa/db"]
        assert db["state"] == "initializing" and "identity_not_on_node" in db["last_error"]
        e = m._entries[("data", "db")]
        assert 0.7 <= e.renewal.deadline - trio.current_time() <= 1.2  # first retry ~1 s, +-20 %
        assert m.all_issued()  # a refusal is an answer: readiness does not wait for db
        assert e.denied

        # the CA goes away: renewal fails, the certificate in force stays
        server.stop(0).wait()
        serial = web["serial"]
        m.release("data", "db")
        m.force_renew_all()
        with trio.fail_after(15):
            while m._entries[("shop", "web")].last_error is None:
                await trio.sleep(0.05)
        web = {c["identity"]: c for c in m.status()}[WEB]
        assert web["serial"] == serial and web["state"] == "available" and "UNAVAILABLE" in web["last_error"]
        m.ensure("shop", "api")  # a new pod while the CA is away: no answer, not ready
        with trio.fail_after(15):
            while m._entries[("shop", "api")].last_error is None:
                await trio.sleep(0.05)
        assert not m.all_issued()
        n.cancel_scope.cancel()


def test_ca_backoff_is_ztunnels():
    assert schedule.ca_backoff(1, 0.5) == 1.0
    assert schedule.ca_backoff(2, 0.0) == pytest.approx(1.6) and schedule.ca_backoff(2, 0.999) == pytest.approx(2.4, 0.01)
    assert schedule.ca_backoff(9, 0.5) == 150.0 and schedule.ca_backoff(50, 0.999) <= 180.0
    r = schedule.Renewal(0.0)
    for _ in range(20):
        r.on_failed(100.0, 0.5)
    assert r.deadline == 250.0


@pytest.mark.parametrize("identity, message", [
    ("ca_address: x:1\n  ca_root: r\n  ca_cert: c\n  ca_key: k", "ca_address replaces ca_cert/ca_key"),
    ("ca_address: x:1", "ca_address needs ca_root"),
    ("ca_address: x:1\n  ca_root: r\n  ca_credential_cert: c", "ca_credential_cert and ca_credential_key go together"),
    ("ca_address: dns:///istiod:15012\n  ca_root: r", "is not host:port"),
    ("ca_address: istiod\n  ca_root: r", "is not host:port"),
    ("ca_address: 'fd00::5:15012'\n  ca_root: r", "is not host:port"),
    ("ca_address: x:0\n  ca_root: r", "is not host:port"),
])
def test_ca_client_config_is_checked(identity, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(f"identity:\n  {identity}\n", "agent.yaml")


@pytest.mark.parametrize("address", ["istiod.istio-system.svc:15012", "10.0.0.5:15012", "[fd00::5]:15012"])
def test_ca_addresses_the_client_dials_are_accepted(address):
    cfg = parse_config(f"identity:\n  ca_address: '{address}'\n  ca_root: r\n", "agent.yaml")
    assert cfg.identity.ca_address == address


def test_doctor_warns_when_the_node_holds_a_signing_key():
    from agent.cli.doctor import _signing_key

    status, what, fix = _signing_key(IdentityConfig(ca_cert="/etc/n/cert.pem", ca_key="/etc/n/key.pem"))
    assert status == "WARN" and "/etc/n/key.pem" in what and "identity.ca_address" in fix
    assert _signing_key(IdentityConfig(ca_address="10.0.0.1:15012", ca_root="/r.pem"))[0] == "OK"
