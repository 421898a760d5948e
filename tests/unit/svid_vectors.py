"""The X.509-SVID vector table: every case a validator must decide, as DER bytes and the
named reason it must give. Data only, plus the minting that builds it; the checks live
in test_identity.py and take the validator as a parameter, so a second implementation
(the native core, agent/dataplane.py) is tested against the same table by adding one
entry to ``VALIDATORS`` there.

Two sources:
- ``GO_SPIFFE``: go-spiffe's files (../shared/vectors/go-spiffe/, SOURCES.md says what
  go-spiffe expects of each). As shipped they are expired and their ID is not of the
  /ns/<ns>/sa/<sa> form, so ``shipped`` is what the time- and trust-free profile check
  (go-spiffe's x509svid.Parse) must say, and ``reminted`` what full validation must say
  of the same profile re-minted: same extensions and key usages, fresh validity, an
  /ns/.../sa/... ID, a real chain to a test root.
- ``SPEC_RULES``: one case per rule of the X.509-SVID spec, SPIFFE-ID.md and RFC 5280
  path validation (docs/identity.md lists the same rules with the same reasons).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

GO_SPIFFE = Path(__file__).resolve().parents[2] / ".." / "shared" / "vectors" / "go-spiffe"
SVID_DIR = GO_SPIFFE / "svid" / "x509svid" / "testdata"
BUNDLE_DIR = GO_SPIFFE / "bundle" / "x509bundle" / "testdata"
TD = "cluster.local"
ID = "spiffe://cluster.local/ns/shop/sa/web"
# A fixed instant: minted certificates are valid around it, so a table row never
# depends on when the suite runs.
NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
DER = serialization.Encoding.DER


@dataclass(frozen=True)
class GoSpiffeFile:
    cert: str
    key: str | None
    shipped: str  # "" = accepted by the profile check; else the reason
    reminted: str  # "" = accepted by full validation; else the reason
    go_test: str


GO_SPIFFE_FILES = [
    GoSpiffeFile("good-leaf-only.pem", "key-pkcs8-rsa.pem", "", "", 'TestParse "Single certificate and key"'),
    GoSpiffeFile("good-leaf-and-intermediate.pem", "key-pkcs8-ecdsa.pem", "", "",
                 '"Certificate with intermediate and key"'),
    GoSpiffeFile("good-cert-and-key.pem", "good-cert-and-key.pem", "", "", '"Certificate and Key in the same byte array"'),
    GoSpiffeFile("good-key-and-cert.pem", "good-key-and-cert.pem", "", "", '"Key and certificate in the same byte array"'),
    GoSpiffeFile("wrong-leaf-ca-true.pem", None, "leaf_is_ca", "leaf_is_ca", '"Leaf certificate with CA flag set to true"'),
    GoSpiffeFile("wrong-leaf-cert-sign.pem", None, "leaf_key_usage", "leaf_key_usage",
                 '"Leaf certificate with certSign as key usage"'),
    GoSpiffeFile("wrong-leaf-crl-sign.pem", None, "leaf_key_usage", "leaf_key_usage",
                 '"Leaf certificate with cRLSign as key usage"'),
    GoSpiffeFile("wrong-leaf-no-digital-signature.pem", None, "leaf_key_usage", "leaf_key_usage",
                 '"Leaf certificate without digitalSignature as key usage"'),
    GoSpiffeFile("wrong-leaf-empty-id.pem", None, "no_uri_san", "no_uri_san", '"Certificate without SPIFFE ID"'),
    GoSpiffeFile("wrong-intermediate-no-ca.pem", None, "untrusted", "untrusted", '"Signing certificate without CA flag"'),
    GoSpiffeFile("wrong-intermediate-no-key-cert-sign.pem", None, "untrusted", "untrusted",
                 "\"Signing certificate without 'keyCertSign' usage\""),
]
# (file, key file, reason of the file loader agent.identity.pem.parse_svid, or "")
GO_SPIFFE_FILE_LOADS = [
    ("good-leaf-only.pem", "key-pkcs8-rsa.pem", ""),
    ("good-leaf-and-intermediate.pem", "key-pkcs8-ecdsa.pem", ""),
    ("good-cert-and-key.pem", "good-cert-and-key.pem", ""),
    ("good-key-and-cert.pem", "good-key-and-cert.pem", ""),
    ("corrupt-cert.pem", "key-pkcs8-rsa.pem", "malformed_certificate"),
    ("good-leaf-only.pem", "corrupt-key.pem", "malformed_key"),
    ("not-pem", "key-pkcs8-rsa.pem", "no_certificate"),
    ("good-leaf-only.pem", "not-pem", "malformed_key"),
    ("good-leaf-only.pem", "key-pkcs8-ecdsa.pem", "key_mismatch"),
]
# (bundle file, number of authorities, or the reason it is refused)
GO_SPIFFE_BUNDLES = [("certs.pem", 2), ("cert.pem", 1), ("empty.pem", 0),
                     ("not-pem.pem", "no_certificate"), ("corrupted.pem", "malformed_certificate")]


# ---- minting --------------------------------------------------------------------------
def _ku(*bits: str, **_kw) -> x509.KeyUsage:
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
             "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{n: n in bits for n in names})


@dataclass
class Spec:
    """What to mint; defaults are a good leaf (``ca=False``) or a good signing cert."""
    cn: str
    ca: bool = False
    path_len: int | None = None
    ku: tuple[str, ...] | None = None  # None: the default for the kind; () = no extension
    ku_critical: bool = True
    eku: tuple | None = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
    uris: tuple[str, ...] | None = None  # None: ID for a leaf, the trust domain's ID for a CA
    dns: tuple[str, ...] = ()
    start: dt.timedelta = -HOUR  # relative to NOW
    end: dt.timedelta = 24 * HOUR
    extra: tuple = ()  # (ExtensionType, critical)
    copy_from: x509.Certificate | None = None  # re-mint: take this certificate's extensions
    at: dt.datetime = NOW  # what start and end are relative to
    key: object = field(default=None)


def mint(spec: Spec, issuer: tuple[x509.Certificate, object] | None) -> tuple[x509.Certificate, object]:
    key = spec.key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hostmesh-test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, spec.cn)])
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (name, key)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(spec.at + spec.start).not_valid_after(spec.at + spec.end)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False))
    uris = spec.uris if spec.uris is not None else ((f"spiffe://{TD}",) if spec.ca else (ID,))
    if spec.copy_from is not None:
        b = _copy_profile(b, spec.copy_from, uris)
    else:
        b = b.add_extension(x509.BasicConstraints(ca=spec.ca, path_length=spec.path_len if spec.ca else None),
                            critical=True)
        bits = spec.ku if spec.ku is not None else (("key_cert_sign", "crl_sign") if spec.ca else ("digital_signature",))
        if bits:
            b = b.add_extension(_ku(*bits), critical=spec.ku_critical)
        if spec.eku and not spec.ca:
            b = b.add_extension(x509.ExtendedKeyUsage(list(spec.eku)), critical=False)
        names = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in spec.dns]
        if names:
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    for ext, critical in spec.extra:
        b = b.add_extension(ext, critical=critical)
    return b.sign(signer, hashes.SHA256()), key


def _copy_profile(b: x509.CertificateBuilder, src: x509.Certificate, uris) -> x509.CertificateBuilder:
    """The source certificate's extensions and key usages; URI SANs replaced by ``uris``
    (other SAN entries kept, so a file without a URI SAN stays without one)."""
    for e in src.extensions:
        if e.oid in (ExtensionOID.SUBJECT_KEY_IDENTIFIER, ExtensionOID.AUTHORITY_KEY_IDENTIFIER):
            continue
        if e.oid == ExtensionOID.SUBJECT_ALTERNATIVE_NAME:
            others = [n for n in e.value if not isinstance(n, x509.UniformResourceIdentifier)]
            had_uri = len(others) < len(list(e.value))
            names = ([x509.UniformResourceIdentifier(u) for u in uris] if had_uri else []) + others
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=e.critical)
            continue
        b = b.add_extension(e.value, critical=e.critical)
    return b


def der(*certs: x509.Certificate) -> list[bytes]:
    return [c.public_bytes(DER) for c in certs]


@dataclass(frozen=True)
class Case:
    name: str
    source: str  # the rule's source, as docs/identity.md cites it
    chain: list[bytes]
    roots: list[bytes]
    want: str  # "" = accepted
    expected_id: str | None = None
    trust_domain: str = TD


def _patch_validity(cert_der: bytes, cert: x509.Certificate) -> bytes:
    """The leaf with a notBefore month of 13: a validity field that does not parse."""
    stamp = cert.not_valid_before_utc.strftime("%y%m%d%H%M%SZ").encode()
    i = cert_der.index(stamp)
    return cert_der[:i + 2] + b"13" + cert_der[i + 4:]


def spec_cases() -> list[Case]:
    """One case per rule (built fresh: minting takes ~1 ms per certificate)."""
    root = mint(Spec("root", ca=True, end=3650 * 24 * HOUR), None)
    inter = mint(Spec("node", ca=True, path_len=0), root)
    R = der(root[0])

    def leaf(issuer=inter, **kw):
        return mint(Spec("leaf", **kw), issuer)[0]

    def via(c, *chain):
        return der(c, *chain)

    def ca(cn, issuer=root, **kw):
        return mint(Spec(cn, ca=True, **kw), issuer)

    crit = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    other_root = ca("other root", None)
    short_root = ca("root pathLen 1", None, path_len=1)
    s1 = ca("s-1", short_root)
    s2 = ca("s-2", s1)
    deep1, old_deep1 = ca("deep-1"), ca("deep-1", start=-90 * 24 * HOUR, end=-30 * 24 * HOUR)
    deep2, deep2_old = ca("deep-2", deep1), ca("deep-2", old_deep1)
    old_root = ca("old root", None, start=-90 * 24 * HOUR, end=-HOUR)
    under_old = ca("under old root", old_root)
    no_ca = mint(Spec("node", ca=False, ku=("key_cert_sign",), uris=()), root)
    no_cert_sign = ca("node", ku=("crl_sign",))
    below_zero = ca("node-2", inter)
    young = ca("young", start=HOUR)
    nc = ca("nc", extra=((x509.NameConstraints(permitted_subtrees=[x509.UniformResourceIdentifier(".cluster.local")],
                                               excluded_subtrees=None), True),))
    crit_inter = ca("crit", extra=((crit, True),))
    soft_root = ca("root key usage not critical", None, ku_critical=False)
    soft_inter = ca("node key usage not critical", ku_critical=False)
    lf = leaf()
    uri = "X509-SVID 2, SPIFFE-ID 2"
    return [
        Case("good leaf", "X509-SVID 3.1", via(lf, inter[0]), R, ""),
        Case("leaf directly under the root", "X509-SVID 5.1", der(leaf(root)), R, ""),
        Case("root (trust anchor) key usage not critical", "RFC 5280 6.1.1 (d)", der(leaf(soft_root)),
             der(soft_root[0]), ""),
        Case("intermediate key usage not critical", "X509-SVID 4.3", via(leaf(soft_inter), soft_inter[0]), R,
             "untrusted"),
        Case("leaf CA true", "X509-SVID 4.1, 5.2", via(leaf(ca=True, ku=("digital_signature",)), inter[0]), R,
             "leaf_is_ca"),
        Case("leaf keyCertSign", "X509-SVID 4.3, 5.2", via(leaf(ku=("digital_signature", "key_cert_sign")), inter[0]),
             R, "leaf_key_usage"),
        Case("leaf cRLSign", "X509-SVID 4.3, 5.2", via(leaf(ku=("digital_signature", "crl_sign")), inter[0]), R,
             "leaf_key_usage"),
        Case("leaf without digitalSignature", "X509-SVID 4.3", via(leaf(ku=("key_agreement",)), inter[0]), R,
             "leaf_key_usage"),
        Case("leaf without key usage", "X509-SVID 4.3", via(leaf(ku=()), inter[0]), R, "leaf_key_usage"),
        Case("leaf key usage not critical", "X509-SVID 4.3", via(leaf(ku_critical=False), inter[0]), R,
             "leaf_key_usage"),
        Case("leaf keyEncipherment and keyAgreement allowed", "X509-SVID 4.3",
             via(leaf(ku=("digital_signature", "key_encipherment", "key_agreement")), inter[0]), R, ""),
        Case("leaf EKU without clientAuth", "X509-SVID 4.4",
             via(leaf(eku=(ExtendedKeyUsageOID.SERVER_AUTH,)), inter[0]), R, "leaf_key_usage"),
        Case("leaf without EKU allowed", "X509-SVID 4.4", via(leaf(eku=None), inter[0]), R, ""),
        Case("no URI SAN", "X509-SVID 2", via(leaf(uris=(), dns=("web.shop",)), inter[0]), R, "no_uri_san"),
        Case("two URI SANs", "X509-SVID 2, 5.2", via(leaf(uris=(ID, ID + "2")), inter[0]), R, "multiple_uri_sans"),
        Case("path with a trailing newline", "SPIFFE-ID 2.2", via(leaf(uris=(ID + "\n",)), inter[0]), R,
             "bad_spiffe_id"),
        Case("trust domain with a trailing newline", "SPIFFE-ID 2.1",
             via(leaf(uris=("spiffe://cluster.local\n/ns/shop/sa/web",)), inter[0]), R, "bad_spiffe_id"),
        Case("upper-case trust domain", "SPIFFE-ID 2.1",
             via(leaf(uris=("spiffe://Cluster.local/ns/shop/sa/web",)), inter[0]), R, "bad_spiffe_id"),
        Case("upper-case scheme", uri, via(leaf(uris=("SPIFFE://cluster.local/ns/shop/sa/web",)), inter[0]), R,
             "bad_spiffe_id"),
        Case("percent-encoded path", "SPIFFE-ID 2.2",
             via(leaf(uris=("spiffe://cluster.local/ns/shop/sa/w%65b",)), inter[0]), R, "bad_spiffe_id"),
        Case("trust domain with a port", "SPIFFE-ID 2.1",
             via(leaf(uris=("spiffe://cluster.local:8443/ns/shop/sa/web",)), inter[0]), R, "bad_spiffe_id"),
        Case("query in the ID", "SPIFFE-ID 2",
             via(leaf(uris=("spiffe://cluster.local/ns/shop/sa/web?x=1",)), inter[0]), R, "bad_spiffe_id"),
        Case("leaf with the root ID (no path)", "X509-SVID 3.1",
             via(leaf(uris=("spiffe://cluster.local",)), inter[0]), R, "bad_spiffe_id"),
        Case("not the workload form", "SPEC.md Identity",
             via(leaf(uris=("spiffe://cluster.local/workload-1",)), inter[0]), R, "bad_spiffe_id"),
        Case("another trust domain", "X509-SVID 5.1",
             via(leaf(uris=("spiffe://evil.local/ns/shop/sa/web",)), inter[0]), R, "trust_domain_mismatch"),
        Case("not the expected identity", "SPEC.md Tunnel", via(lf, inter[0]), R, "unexpected_identity",
             expected_id=ID + "x"),
        Case("root not in the bundle", "RFC 5280 6.1", via(lf, inter[0]), der(other_root[0]), "untrusted"),
        Case("intermediate missing", "RFC 5280 6.1", der(lf), R, "untrusted"),
        Case("bad leaf of an untrusted chain: the chain's reason first (the handshake's order)", "RFC 5280 6.1",
             via(leaf(ca=True, ku=("digital_signature", "key_cert_sign")), inter[0]), der(other_root[0]), "untrusted"),
        Case("signature by another key", "RFC 5280 6.1.3 (a)(1)",
             via(leaf((inter[0], ec.generate_private_key(ec.SECP256R1()))), inter[0]), R, "untrusted"),
        Case("intermediate not a CA", "X509-SVID 3.2, 4.1", via(leaf(no_ca), no_ca[0]), R, "untrusted"),
        Case("intermediate without keyCertSign", "X509-SVID 3.2, 4.3", via(leaf(no_cert_sign), no_cert_sign[0]), R,
             "untrusted"),
        Case("intermediate pathLen 0 above another intermediate", "RFC 5280 4.2.1.9",
             via(leaf(below_zero), below_zero[0], inter[0]), R, "untrusted"),
        Case("root pathLen 1 above two intermediates", "RFC 5280 4.2.1.9", via(leaf(s2), s2[0], s1[0]),
             der(short_root[0]), "untrusted"),
        Case("root pathLen 1 above one intermediate", "RFC 5280 4.2.1.9", via(leaf(s1), s1[0]), der(short_root[0]),
             ""),
        Case("expired intermediate deep in the chain", "RFC 5280 6.1.3 (a)(2)",
             via(leaf(deep2_old), deep2_old[0], old_deep1[0]), R, "expired"),
        Case("unused expired extra certificate ignored", "RFC 5280 6.1",
             via(leaf(deep2), old_deep1[0], deep2[0], deep1[0]), R, ""),
        Case("intermediates in any order", "RFC 8446 4.4.2", via(leaf(deep2), deep1[0], deep2[0]), R, ""),
        Case("expired root", "RFC 5280 6.1.3 (a)(2)", via(leaf(under_old), under_old[0]), der(old_root[0]), "expired"),
        Case("intermediate not yet valid", "RFC 5280 6.1.3 (a)(2)", via(leaf(young), young[0]), R, "not_yet_valid"),
        Case("expired leaf", "RFC 5280 6.1.3 (a)(2)", via(leaf(start=-48 * HOUR, end=-HOUR), inter[0]), R, "expired"),
        Case("leaf not yet valid", "RFC 5280 6.1.3 (a)(2)", via(leaf(start=HOUR), inter[0]), R, "not_yet_valid"),
        Case("malformed validity field", "RFC 5280 4.1.2.5",
             [_patch_validity(der(lf)[0], lf), der(inter[0])[0]], R, "bad_validity"),
        Case("unknown critical extension on the leaf", "RFC 5280 4.2", via(leaf(extra=((crit, True),)), inter[0]), R,
             "unknown_critical_extension"),
        Case("unknown critical extension on an intermediate", "RFC 5280 4.2", via(leaf(crit_inter), crit_inter[0]),
             R, "unknown_critical_extension"),
        Case("unknown non-critical extension ignored", "RFC 5280 4.2", via(leaf(extra=((crit, False),)), inter[0]),
             R, ""),
        Case("critical name constraints (not processed)", "X509-SVID 4.2, RFC 5280 4.2", via(leaf(nc), nc[0]), R,
             "unknown_critical_extension"),
        Case("no certificate", "X509-SVID 5", [], R, "no_certificate"),
        Case("more certificates than MAX_CHAIN", "hostmesh bound", via(lf, *([inter[0]] * 9)), R, "untrusted"),
    ]


def reminted(f: GoSpiffeFile) -> Case:
    """A go-spiffe file's profile re-minted under a test root (see the module docstring)."""
    root = mint(Spec("root", ca=True, end=3650 * 24 * HOUR), None)
    certs = x509.load_pem_x509_certificates((SVID_DIR / f.cert).read_bytes())
    if len(certs) > 1:
        issuer = mint(Spec(f"{f.cert} signer", copy_from=certs[1], uris=(f"spiffe://{TD}",)), root)
    else:
        issuer = mint(Spec("node", ca=True), root)
    leaf = mint(Spec(f"{f.cert} leaf", copy_from=certs[0], uris=(ID,)), issuer)[0]
    return Case(f"go-spiffe {f.cert} re-minted", f"go-spiffe {f.go_test}", der(leaf, issuer[0]), der(root[0]),
                f.reminted)
