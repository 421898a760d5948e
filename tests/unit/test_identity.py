"""SPIFFE IDs, peer validation with named reasons, renewal schedule (agent.identity)."""

import datetime as dt

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from agent.identity import ca, pem, schedule, spiffe, validate
from agent.identity.testing import bad_svids, make_pki
from agent.identity.validate import REASONS, validate_leaf, validate_peer
from tests.unit import svid_vectors as vectors


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


# SPIFFE-ID.md written out as character sets, independently of spiffe.py's patterns.
_TD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_SEG_CHARS = _TD_CHARS | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def grammar_accepts(s: str) -> bool:
    if not s.startswith("spiffe://") or len(s.encode("utf-8", "surrogatepass")) > 2048:
        return False
    td, sep, path = s[len("spiffe://"):].partition("/")
    if not td or len(td) > 255 or not set(td) <= _TD_CHARS:
        return False
    return not sep or all(seg not in ("", ".", "..") and set(seg) <= _SEG_CHARS for seg in path.split("/"))


_near = st.text(alphabet="abcAZ09.-_/:%@?#\n\r\t \x00é", max_size=12)
_ids = st.builds(lambda scheme, td, segs, tail: scheme + td + "".join("/" + x for x in segs) + tail,
                 st.sampled_from(["spiffe://", "SPIFFE://", "spiffe:/", "spiffe:", "http://", ""]),
                 st.one_of(st.sampled_from(["cluster.local", "example.org", ""]), _near),
                 st.lists(st.one_of(st.sampled_from(["ns", "sa", "web", ".", "..", ""]), _near), max_size=5),
                 st.sampled_from(["", "\n", "/", "\r\n", " ", "?q", "#f"]))


@given(st.one_of(_ids, st.text(max_size=60)))
def test_no_string_the_grammar_refuses_parses(s):
    """SPIFFE-ID.md's grammar exactly: refused strings raise, accepted ones parse, and a
    workload ID is one of those with the /ns/<ns>/sa/<sa> form."""
    if grammar_accepts(s):
        td, segs = spiffe.parse_id(s)
        assert "spiffe://" + td + "".join("/" + x for x in segs) == s
    else:
        with pytest.raises(spiffe.SpiffeError):
            spiffe.parse_id(s)
        with pytest.raises(spiffe.SpiffeError):
            spiffe.parse(s)
        if s.startswith("spiffe://"):
            assert spiffe.parse_principal(s) is None


@pytest.mark.parametrize("uri", [ID + "\n", "spiffe://cluster.local\n/ns/shop/sa/web", ID + "/",
                                 "spiffe://cluster.local/ns/shop/sa/we b", "spiffe://" + "a" * 256 + "/ns/a/sa/b",
                                 "spiffe://cluster.local/ns/shop/sa/" + "a" * 2048, "spiffe://user@td/ns/a/sa/b"])
def test_spiffe_edge_cases_refused(uri):
    with pytest.raises(spiffe.SpiffeError):
        spiffe.parse(uri)
    assert spiffe.parse_principal(uri.removeprefix("spiffe://")) is None


def test_trust_domain_check_is_exact():
    assert spiffe.is_trust_domain("cluster.local") and not spiffe.is_trust_domain("cluster.local\n")
    assert spiffe.parse_id("spiffe://example.org") == ("example.org", ())
    assert spiffe.parse_principal("cluster.local/ns/a/sa/b") == spiffe.SpiffeId("cluster.local", "a", "b")


# ---- the vector table: one test per row, the validator a parameter --------------------
# A second implementation (the native core) is added here, with the same signature:
# (chain DER list, roots DER list, trust domain, now, expected id) -> .ok/.reason/.spiffe_id
VALIDATORS = {"python": validate.validate_der}


def _native_validate_der(chain_der, roots_der, trust_domain, now, expected_id=None):
    """The Rust core's checks (agent.dataplane.verify) behind the same signature."""
    import ssl as _ssl
    from types import SimpleNamespace

    from agent import dataplane

    pem = lambda ders: "".join(_ssl.DER_cert_to_PEM_cert(d) for d in ders).encode()  # noqa: E731
    v = dataplane.verify(pem(chain_der), pem(roots_der), trust_domain, now, expected_id)
    return SimpleNamespace(ok=v.ok, reason="" if v.ok else v.reason, spiffe_id=v.spiffe_id)


# the native core runs the same table (SPEC: one set of rules, wherever they run); the
# extension is built by make setup, so a missing build fails here rather than skipping
VALIDATORS["native"] = _native_validate_der


# ... and its profile check (go-spiffe's x509svid.Parse): (chain DER list) -> verdict
PROFILES = {"python": validate.svid_profile_der}
SPEC_CASES = vectors.spec_cases()


@pytest.fixture(params=sorted(VALIDATORS))
def validator(request):
    return VALIDATORS[request.param]


@pytest.fixture(params=sorted(PROFILES))
def profile(request):
    return PROFILES[request.param]


def _check(validator, case: vectors.Case):
    v = validator(case.chain, case.roots, case.trust_domain, vectors.NOW, case.expected_id)
    assert (v.ok, v.reason) == (not case.want, case.want), f"{case.name} ({case.source}): {v}"
    assert v.reason == "" or v.reason in REASONS
    if v.ok:
        assert v.spiffe_id == ID


@pytest.mark.parametrize("case", SPEC_CASES, ids=[c.name for c in SPEC_CASES])
def test_spec_rule(validator, case):
    _check(validator, case)


@pytest.mark.parametrize("f", vectors.GO_SPIFFE_FILES, ids=[f.cert for f in vectors.GO_SPIFFE_FILES])
def test_go_spiffe_profile_reminted(validator, f):
    _check(validator, vectors.reminted(f))


@pytest.mark.parametrize("f", vectors.GO_SPIFFE_FILES, ids=[f.cert for f in vectors.GO_SPIFFE_FILES])
def test_go_spiffe_file_as_shipped(profile, f):
    """Age and ID form do not decide the profile check, so the files run unchanged."""
    certs = x509.load_pem_x509_certificates((vectors.SVID_DIR / f.cert).read_bytes())
    v = profile(vectors.der(*certs))
    assert (v.ok, v.reason) == (not f.shipped, f.shipped), f"{f.cert} ({f.go_test}): {v}"
    if v.ok:
        assert v.spiffe_id == "spiffe://example.org/workload-1"


def test_go_spiffe_files_as_shipped_are_expired_for_full_validation(validator):
    """The shipped files ended in 2025 (ECDSA: 2020): full validation must say so."""
    certs = x509.load_pem_x509_certificates((vectors.SVID_DIR / "good-leaf-and-intermediate.pem").read_bytes())
    v = validator(vectors.der(certs[0], certs[1]), vectors.der(certs[1]), "example.org", vectors.NOW)
    assert (v.ok, v.reason) == (False, "expired")


@pytest.mark.parametrize("cert, key, want", vectors.GO_SPIFFE_FILE_LOADS)
def test_go_spiffe_svid_files_load(cert, key, want):
    def load():
        return pem.parse_svid((vectors.SVID_DIR / cert).read_bytes(), (vectors.SVID_DIR / key).read_bytes())

    if not want:
        chain, _ = load()
        assert chain
    else:
        with pytest.raises(pem.PemError) as e:
            load()
        assert e.value.reason == want


@pytest.mark.parametrize("name, want", vectors.GO_SPIFFE_BUNDLES)
def test_go_spiffe_bundles(name, want):
    data = (vectors.BUNDLE_DIR / name).read_bytes()
    if isinstance(want, int):
        assert len(pem.parse_bundle(data)) == want
    else:
        with pytest.raises(pem.PemError) as e:
            pem.parse_bundle(data)
        assert e.value.reason == want


def test_openssl_codes_name_intermediate_problems_untrusted():
    """Item 9: an intermediate that is not a CA (79, 24) or lacks keyCertSign (32) is
    ``untrusted``; malformed validity fields (13, 14) are their own reason."""
    assert [validate.reason_from_tls_error(c, "") for c in (79, 24, 32, 13, 14, 34, 10, 9)] == [
        "untrusted", "untrusted", "untrusted", "bad_validity", "bad_validity", "unknown_critical_extension",
        "expired", "not_yet_valid"]


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


def test_cert_dir_files_are_checked_like_a_peer(tmp_path):
    """Item 8: what an external issuer writes into cert_dir passes the leaf rules and
    chains to the bundle, not only the URI and key checks."""

    from agent.identity.manager import _check_issued_files

    at = dt.datetime.now(dt.UTC)
    root = vectors.mint(vectors.Spec("root", ca=True, at=at), None)
    inter = vectors.mint(vectors.Spec("node", ca=True, at=at), root)
    old = vectors.mint(vectors.Spec("node", ca=True, at=at, start=-90 * vectors.HOUR, end=-vectors.HOUR), root)
    other = vectors.mint(vectors.Spec("other", ca=True, at=at), None)

    def files(issuer=inter, **kw):
        leaf, key = vectors.mint(vectors.Spec("leaf", at=at, **kw), issuer)
        return ca.cert_pem(leaf, issuer[0]), ca.key_pem(key)

    def check(chain_pem, key_pem):
        return _check_issued_files(tmp_path, chain_pem, key_pem, ID, ca.cert_pem(root[0]), "cluster.local")

    assert check(*files()).subject.rfc4514_string() == "CN=leaf,O=hostmesh-test"
    for issuer, kw, reason in [(inter, {"ku": ("digital_signature", "key_cert_sign")}, "leaf_key_usage"),
                               (inter, {"ca": True, "uris": (ID,), "ku": ("digital_signature",)}, "leaf_is_ca"), (other, {}, "untrusted"),
                               (old, {}, "expired")]:
        with pytest.raises(ValueError, match=f"refused: {reason}: "):
            check(*files(issuer, **kw))
    with pytest.raises(ValueError, match=r"\(key_mismatch\)"):
        check(files()[0], files()[1])
    with pytest.raises(ValueError, match="not spiffe://cluster.local/ns/shop/sa/web"):
        check(*files(uris=("spiffe://cluster.local/ns/shop/sa/db",)))


def test_config_trust_domain_follows_the_grammar():
    from agent.config import IdentityConfig
    from agent.schema import Invalid

    assert IdentityConfig(trust_domain="example.org").trust_domain == "example.org"
    for bad in ("cluster.local\n", "Cluster.local", "td:8080", ""):
        with pytest.raises(Invalid, match="is not a SPIFFE trust domain"):
            IdentityConfig(trust_domain=bad)
