"""SPIFFE IDs, peer validation with named reasons, renewal schedule (agent.identity)."""

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.identity import ca, schedule, spiffe
from agent.identity.testing import bad_svids, make_pki
from agent.identity.validate import REASONS, validate_leaf, validate_peer


def now() -> dt.datetime:
    """The time of the check itself: certificates are minted when the fixture runs,
    which in a full suite is minutes after this module is imported."""
    return dt.datetime.now(dt.UTC)

ID = "spiffe://cluster.local/ns/shop/sa/web"


@pytest.mark.parametrize("uri, ok", [
    (ID, True), ("spiffe://cluster.local/ns/a/sa/b", True),
    ("spiffe://Cluster.local/ns/a/sa/b", False), ("http://cluster.local/ns/a/sa/b", False),
    ("spiffe://cluster.local/ns/a", False), ("spiffe://cluster.local/ns//sa/b", False),
    ("spiffe://cluster.local/ns/../sa/b", False), ("spiffe:///ns/a/sa/b", False),
])
def test_spiffe_parse(uri, ok):
    if ok:
        assert str(spiffe.parse(uri)) == uri
    else:
        with pytest.raises(spiffe.SpiffeError):
            spiffe.parse(uri)


@given(st.text(max_size=80))
def test_spiffe_parse_never_crashes(s):
    try:
        spiffe.parse(s)
    except spiffe.SpiffeError:
        pass


def test_sni_is_dns_safe_and_distinct():
    a = spiffe.sni_for("shop", "web", "cluster.local")
    b = spiffe.sni_for("shop", "web.v2", "cluster.local")
    assert a != b and all(len(label) <= 63 for label in b.split("."))


@pytest.fixture(scope="module")
def pki():
    return make_pki()


def chain_of(pem: bytes):
    return ca.load_certs(pem)


def test_good_svid_validates(pki):
    chain, _ = pki.svid(ID)
    v = validate_peer(chain_of(chain), [pki.root], "cluster.local", now(), expected_id=ID)
    assert v.ok and v.spiffe_id == ID
    leaf = chain_of(chain)[0]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(hours=24, minutes=5)


def test_every_bad_svid_is_rejected_with_its_reason(pki):
    for reason, (chain, _) in bad_svids(pki, ID).items():
        v = validate_peer(chain_of(chain), [pki.root], "cluster.local", now())
        want = "untrusted" if reason.startswith("untrusted") else reason
        assert (v.ok, v.reason) == (False, want), reason
        assert v.reason in REASONS


def test_unexpected_identity_and_rotation_bundle(pki):
    chain, _ = pki.svid(ID)
    v = validate_peer(chain_of(chain), [pki.root], "cluster.local", now(), expected_id=ID + "x")
    assert v.reason == "unexpected_identity"
    new = make_pki()
    # a bundle with the old and the new root accepts both during rotation
    assert validate_peer(chain_of(new.svid(ID)[0]), [pki.root, new.root], "cluster.local", now()).ok
    assert validate_peer(chain_of(chain), [pki.root, new.root], "cluster.local", now()).ok
    assert validate_peer([], [pki.root], "cluster.local", now()).reason == "no_certificate"


def test_leaf_rules_alone(pki):
    assert validate_leaf(chain_of(pki.svid(ID)[0])[0], "cluster.local", ID).ok
    assert validate_leaf(None, "cluster.local").reason == "no_certificate"
    assert validate_leaf(chain_of(pki.svid(ID, ca=True)[0])[0], "cluster.local").reason == "leaf_is_ca"


def test_renewal_schedule_half_life_with_jitter_and_backoff():
    assert schedule.renew_at(0, 100, 0.5, 0.1, 0.5) == 50
    assert schedule.renew_at(0, 100, 0.5, 0.1, 0.0) == pytest.approx(40)
    assert schedule.renew_at(0, 100, 0.5, 0.1, 0.999) == pytest.approx(59.98)
    r = schedule.Renewal(10.0)
    assert not r.due(9.9) and r.due(10.0)
    r.on_failed(10.0)
    assert r.next_deadline() == 11.0
    for _ in range(20):
        r.on_failed(100.0)
    assert r.next_deadline() == 100.0 + schedule.BACKOFF_CAP_S
    r.on_renewed(200, 300, 0.5, 0.0, 0.3)
    assert (r.failures, r.next_deadline()) == (0, 250)


def _node_cfg(d, node="node-0", **kw):
    from agent.config import IdentityConfig

    return IdentityConfig(ca_cert=str(d / "nodes" / node / "cert.pem"), ca_key=str(d / "nodes" / node / "key.pem"),
                          trust_bundle=str(d / "bundle.pem"), **kw)


def test_reload_ca_is_all_or_nothing(tmp_path):
    import trio

    from agent.identity import store
    from agent.identity.manager import IdentityManager

    d, other = tmp_path / "ca", tmp_path / "other"
    for x in (d, other):
        store.init_dir(x)
        store.issue_node(x, "node-0")
    m = IdentityManager(_node_cfg(d), "node-0")

    async def main():
        m.ensure("shop", "web")
        serial = m.get("shop", "web").cert.serial_number
        assert m.reload_ca() == {"ca_changed": False, "reissued": 0}
        # a key that is not the certificate's, then an intermediate of a root not in the bundle
        (d / "nodes" / "node-0" / "key.pem").write_bytes((other / "nodes" / "node-0" / "key.pem").read_bytes())
        with pytest.raises(ValueError, match="is not the key of"):
            m.reload_ca()
        (d / "nodes" / "node-0" / "cert.pem").write_bytes((other / "nodes" / "node-0" / "cert.pem").read_bytes())
        with pytest.raises(ValueError, match="is not issued by a root in"):
            m.reload_ca()
        assert m.get("shop", "web").cert.serial_number == serial  # nothing changed
        # a rotated root: every SVID re-issued at once, chaining to the new root
        store.init_dir(d, rotate=True)
        store.issue_node(d, "node-0")
        r = m.reload_ca()
        assert r["ca_changed"] and r["reissued"] == 1 and r["roots"] == 2
        new = m.get("shop", "web")
        assert new.cert.serial_number != serial
        new_root = ca.load_certs((d / "root.pem").read_bytes())[0]
        assert validate_peer(chain_of(new.chain_pem), [new_root], "cluster.local", now()).ok

    trio.run(main)


def test_cert_dir_files_are_reread_when_they_change(tmp_path):
    import trio

    from agent.config import IdentityConfig
    from agent.identity import store
    from agent.identity.manager import IdentityManager

    d, certs = tmp_path / "ca", tmp_path / "certs"
    store.init_dir(d)
    store.issue_node(d, "node-0")
    sid = "spiffe://cluster.local/ns/shop/sa/web"
    store.issue_leaf(d, sid, certs / "shop" / "web", node="node-0")
    m = IdentityManager(IdentityConfig(cert_dir=str(certs), trust_bundle=str(d / "bundle.pem")), "node-0")

    async def main():
        async with trio.open_nursery() as n:
            await n.start(m.run)
            m.ensure("shop", "web")
            first = m.get("shop", "web").cert.serial_number
            store.issue_leaf(d, sid, certs / "shop" / "web", node="node-0")  # the issuer rotates it
            with trio.fail_after(6):
                while m.get("shop", "web").cert.serial_number == first:
                    await trio.sleep(0.1)
            second = m.get("shop", "web").cert.serial_number
            # files for another identity are refused; the one in force stays
            store.issue_leaf(d, "spiffe://cluster.local/ns/shop/sa/other", certs / "shop" / "web", node="node-0")
            with trio.fail_after(6):
                while not m.counters.get("renewal_failures"):
                    await trio.sleep(0.1)
            assert m.get("shop", "web").cert.serial_number == second
            assert "not spiffe://cluster.local/ns/shop/sa/web" in m.status()[0]["last_error"]
            n.cancel_scope.cancel()

    trio.run(main)
