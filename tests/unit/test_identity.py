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
