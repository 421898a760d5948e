"""The CA service's decision core (agent.casvc.decide): every refusal has its named
reason and gRPC code; node authorization comes from the CA's own view only."""

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from agent.casvc import decide
from agent.identity import ca

TD = "cluster.local"
WEB = f"spiffe://{TD}/ns/shop/sa/web"
DB = f"spiffe://{TD}/ns/data/sa/db"
NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
VIEW = decide.View(TD, {"node-0": frozenset({WEB}), "node-1": frozenset({DB})}, max_ttl_s=86400,
                   default_ttl_s=3600)


@pytest.fixture(scope="module")
def pki():
    root, root_key = ca.make_root(TD, NOW)
    other, other_key = ca.make_root(TD, NOW)
    return {"root": root, "key": root_key, "other": other, "other_key": other_key}


def csr(uris=None, key=None, sid=WEB) -> str:
    c, _ = ca.make_csr(sid, key, uris=uris)
    return ca.csr_pem(c).decode()


def cred(pki, node="node-0", *, root="root", now=NOW, ttl=dt.timedelta(days=30)):
    cert, _ = ca.make_node_credential(pki[root], pki[f"{root}_key" if root != "root" else "key"], node, now, ttl)
    return [cert]


def node0():
    return decide.Caller("node-0", "certificate")


@pytest.mark.parametrize("name, make_pem, reason", [
    ("two SANs", lambda: csr(uris=[WEB, DB]), "csr_san_count"),
    ("no SAN", lambda: csr(uris=[]), "csr_san_count"),
    ("non-SPIFFE SAN", lambda: csr(uris=["https://example.com/web"]), "csr_not_spiffe"),
    ("SPIFFE but not a workload", lambda: csr(uris=[f"spiffe://{TD}/hostmesh/node/node-0"]), "csr_not_spiffe"),
    ("other trust domain", lambda: csr(uris=["spiffe://evil.example/ns/shop/sa/web"]), "csr_trust_domain"),
    ("RSA-1024", lambda: csr(key=rsa.generate_private_key(65537, 1024)), "csr_unsupported_key"),
    ("P-384", lambda: csr(key=ec.generate_private_key(ec.SECP384R1())), "csr_unsupported_key"),
    ("garbage", lambda: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
     "csr_malformed"),
    ("empty", lambda: "", "csr_malformed"),
    ("oversized", lambda: "x" * (decide.MAX_CSR_BYTES + 1), "csr_malformed"),
])
def test_bad_csrs_are_refused_with_their_reason(name, make_pem, reason):
    d = decide.authorize(decide.Request(make_pem(), 0, None), node0(), VIEW)
    assert (d.ok, d.reason, d.code) == (False, reason, "INVALID_ARGUMENT"), (name, d)
    assert d.node == "node-0" and d.message


def test_ed25519_csr_is_an_unsupported_key():
    key = ed25519.Ed25519PrivateKey.generate()

    c = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
         .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(WEB)]), critical=True)
         .sign(key, None))
    d = decide.check_csr(ca.csr_pem(c).decode(), TD)
    assert d.reason == "csr_unsupported_key" and "SVIDs are ECDSA P-256" in d.message


@pytest.mark.parametrize("validity, out", [
    (0, 3600), (600, 600), (86400, 86400), (86401, "validity_too_long"), (-1, "malformed_request"),
])
def test_validity(validity, out):
    d = decide.authorize(decide.Request(csr(), validity, WEB), node0(), VIEW)
    if isinstance(out, int):
        assert d.ok and d.ttl_s == out and d.spiffe_id == WEB
    else:
        assert (d.ok, d.reason, d.code) == (False, out, "INVALID_ARGUMENT")


@pytest.mark.parametrize("caller_node, identity, impersonated, verdict", [
    ("node-0", WEB, WEB, "ok"),
    ("node-0", WEB, None, "ok"),  # no metadata: the CSR names the identity
    ("node-0", DB, DB, "identity_not_on_node"),  # lives only on node-1
    ("node-1", DB, DB, "ok"),
    ("node-1", WEB, WEB, "identity_not_on_node"),
    ("node-0", WEB, DB, "impersonation_mismatch"),
    ("node-2", WEB, WEB, "identity_not_on_node"),  # a node with nothing in the view gets nothing
])
def test_node_authorization_follows_the_view(caller_node, identity, impersonated, verdict):
    d = decide.authorize(decide.Request(csr(sid=identity), 0, impersonated), decide.Caller(caller_node, "certificate"),
                         VIEW)
    if verdict == "ok":
        assert d.ok and d.spiffe_id == identity and d.node == caller_node
    else:
        assert (d.ok, d.reason, d.code) == (False, verdict, "PERMISSION_DENIED")


def test_a_moved_workload_follows_the_view():
    moved = decide.View(TD, {"node-0": frozenset(), "node-1": frozenset({WEB, DB})})
    req = decide.Request(csr(), 0, WEB)
    assert decide.authorize(req, decide.Caller("node-1", "certificate"), moved).ok
    assert decide.authorize(req, node0(), moved).reason == "identity_not_on_node"


@pytest.mark.parametrize("case, reason", [
    ("missing", "no_credential"),
    ("expired", "credential_expired"),
    ("not yet valid", "credential_expired"),
    ("foreign", "credential_untrusted"),
    ("unknown node", "unknown_node"),
    ("an SVID, not a node credential", "credential_not_node"),
    ("good", None),
])
def test_node_credentials(pki, case, reason):
    chain = {
        "missing": lambda: [],
        "expired": lambda: cred(pki, now=NOW - dt.timedelta(days=40)),
        "not yet valid": lambda: cred(pki, now=NOW + dt.timedelta(days=1)),
        "foreign": lambda: cred(pki, root="other"),
        "unknown node": lambda: cred(pki, "node-9"),
        "an SVID, not a node credential": lambda: [ca.make_svid(WEB, pki["root"], pki["key"], NOW)[0]],
        "good": lambda: cred(pki),
    }[case]()
    got = decide.authenticate_certificate(chain, [pki["root"]], VIEW.identities_on.keys(), NOW)
    if reason is None:
        assert got == decide.Caller("node-0", "certificate")
    else:
        assert isinstance(got, decide.Decision) and (got.reason, got.code) == (reason, "UNAUTHENTICATED"), got
        # authentication comes first: a perfect request from this caller is still refused
        assert decide.authorize(decide.Request(csr(), 0, WEB), got, VIEW).reason == reason


def test_an_intermediate_issued_credential_is_not_trusted(pki):
    """Node credentials must come straight from a trusted root: a (stolen) node
    intermediate of the old mode cannot mint one."""
    inter, inter_key = ca.make_intermediate(pki["root"], pki["key"], "node-0", TD, NOW)
    cert, _ = ca.make_node_credential(inter, inter_key, "node-0", NOW)
    got = decide.authenticate_certificate([cert, inter], [pki["root"]], {"node-0"}, NOW)
    assert got.reason == "credential_untrusted"


POD = {"authentication.kubernetes.io/pod-name": ["ztunnel-abc"], "authentication.kubernetes.io/pod-uid": ["u1"]}


@pytest.mark.parametrize("review, reason", [
    ({"authenticated": False, "error": "token expired"}, "token_invalid"),
    ({"authenticated": True, "user": {"username": "alice"}}, "token_invalid"),
    ({"authenticated": True, "user": {"username": "system:serviceaccount:default:web", "extra": POD}},
     "token_not_trusted_account"),
    ({"authenticated": True, "user": {"username": "system:serviceaccount:istio-system:ztunnel",
                                      "extra": {**POD, "authentication.kubernetes.io/pod-uid": ["u2"]}}},
     "token_pod_unknown"),
    ({"authenticated": True, "user": {"username": "system:serviceaccount:istio-system:ztunnel", "extra": POD}}, None),
])
def test_token_callers(review, reason):
    got = decide.authenticate_token(review, frozenset({"istio-system/ztunnel"}), {("ztunnel-abc", "u1"): "node-0"})
    if reason is None:
        assert got == decide.Caller("node-0", "token:istio-system/ztunnel-abc")
    else:
        assert got.reason == reason and got.code == "UNAUTHENTICATED"


def test_every_reason_has_a_code():
    assert set(decide.REASONS.values()) == {"UNAUTHENTICATED", "INVALID_ARGUMENT", "PERMISSION_DENIED", "UNAVAILABLE"}
