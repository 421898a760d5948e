"""X.509-SVID validation per the SPIFFE X.509-SVID spec and RFC 5280 path validation,
with a named reason for every rejection. Pure: certificates and ``now`` in, a verdict out;
no clock, no files, no sockets.

Three entry points, the same rules (docs/identity.md lists each with its source):
- ``validate_peer``: a presented chain against the trust bundle — path building from the
  leaf through the presented intermediates to a root of the bundle (several may be trusted
  at once, for rotation), then every certificate ON THE PATH checked (validity window,
  signing certificates CA with keyCertSign, pathLenConstraint, no unknown critical
  extension); presented certificates that are not on the path are ignored. Then the leaf
  rules: the handshake's order, so a certificate gets the same reason in both places. Used for peers outside a handshake and for files an external issuer writes
  into ``identity.cert_dir``.
- ``validate_leaf``: the leaf rules alone, for a chain OpenSSL verified in the handshake.
- ``svid_profile``: the X.509-SVID profile of a chain without time or trust (go-spiffe's
  ``x509svid.Parse``): leaf rules for any SPIFFE ID, signing certificates CA + keyCertSign.

Reasons are stable names (metric labels, log fields, the native core's errors); the
``detail`` of a verdict is for people and may change.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from agent.identity.spiffe import SpiffeError, parse, parse_id

REASONS = ("no_certificate", "malformed_certificate", "bad_validity", "expired", "not_yet_valid", "untrusted",
           "unknown_critical_extension", "no_uri_san", "multiple_uri_sans", "bad_spiffe_id",
           "trust_domain_mismatch", "leaf_is_ca", "leaf_key_usage", "unexpected_identity", "tls_version",
           "not_tls", "handshake_timeout", "handshake_failed")
# Certificates a presented chain may carry (leaf, node intermediate, spares for a
# rotation); a longer chain is refused before any signature is checked (bounded work).
MAX_CHAIN = 8
# RFC 5280 4.2: a critical extension the validator does not process refuses the
# certificate. These are the ones processed here. Name constraints are NOT (X509-SVID
# 4.2: URI name constraints are rarely supported), so a critical one refuses.
KNOWN_CRITICAL = frozenset({
    ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
})


@dataclass(frozen=True)
class PeerVerdict:
    ok: bool
    spiffe_id: str | None = None
    reason: str = ""
    detail: str = ""


class _Refused(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _fail(reason: str, detail: str = "") -> PeerVerdict:
    assert reason in REASONS, reason
    return PeerVerdict(False, None, reason, detail)


def _name(c: x509.Certificate) -> str:
    return c.subject.rfc4514_string() or f"serial {c.serial_number:x}"


# ---- one certificate --------------------------------------------------------------
def _ext(cert: x509.Certificate, cls):
    try:
        return cert.extensions.get_extension_for_class(cls)
    except x509.ExtensionNotFound:
        return None


def _extensions(cert: x509.Certificate) -> x509.Extensions:
    try:
        return cert.extensions
    except ValueError as e:  # duplicate or undecodable extension (RFC 5280 4.2)
        raise _Refused("malformed_certificate", f"{_name(cert)}: {e}") from None


def _check_extensions(cert: x509.Certificate) -> None:
    for e in _extensions(cert):
        if e.critical and e.oid not in KNOWN_CRITICAL:
            raise _Refused("unknown_critical_extension", f"{_name(cert)}: critical extension {e.oid.dotted_string}")


def _window(cert: x509.Certificate) -> tuple[dt.datetime, dt.datetime]:
    """RFC 5280 4.1.2.5; a window that ends before it starts is malformed, not expired."""
    try:
        nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    except ValueError as e:
        raise _Refused("bad_validity", f"{_name(cert)}: {e}") from None
    if nb > na:
        raise _Refused("bad_validity", f"{_name(cert)}: notBefore {nb:%Y-%m-%dT%H:%M:%SZ} is after notAfter "
                                       f"{na:%Y-%m-%dT%H:%M:%SZ}")
    return nb, na


def _check_window(cert: x509.Certificate, now: dt.datetime) -> None:
    nb, na = _window(cert)
    if now < nb:
        raise _Refused("not_yet_valid", f"{_name(cert)}: valid from {nb:%Y-%m-%dT%H:%M:%SZ}")
    if now > na:
        raise _Refused("expired", f"{_name(cert)}: expired {na:%Y-%m-%dT%H:%M:%SZ}")


def _is_ca(cert: x509.Certificate) -> bool:
    bc = _ext(cert, x509.BasicConstraints)
    return bool(bc and bc.value.ca)


def _check_signing(cert: x509.Certificate, anchor: bool = False) -> None:
    """X509-SVID 3.2, 4.1, 4.3: a signing certificate is a CA with keyCertSign, its key
    usage critical. Anything else cannot vouch for what it signed: ``untrusted``. A
    trust anchor (the bundle's root ending the path) may carry its key usage
    non-critical: RFC 5280 6.1.1 (d) takes an anchor's name and key as given, and
    go-spiffe and ztunnel accept such roots (ztunnel's own test root is one)."""
    _check_extensions(cert)
    if not _is_ca(cert):
        raise _Refused("untrusted", f"{_name(cert)}: signing certificate is not a CA (basicConstraints cA false)")
    ku = _ext(cert, x509.KeyUsage)
    if ku is None or not (ku.critical or anchor) or not ku.value.key_cert_sign:
        raise _Refused("untrusted", f"{_name(cert)}: signing certificate without a critical keyCertSign key usage")


def _uri_sans(cert: x509.Certificate) -> list[str]:
    san = _ext(cert, x509.SubjectAlternativeName)
    return san.value.get_values_for_type(x509.UniformResourceIdentifier) if san else []


def _check_leaf(leaf: x509.Certificate) -> str:
    """The leaf rules for any SPIFFE ID; returns the ID."""
    _check_extensions(leaf)
    uris = _uri_sans(leaf)
    if not uris:
        raise _Refused("no_uri_san", "no URI SAN (X509-SVID 2)")
    if len(uris) > 1:
        raise _Refused("multiple_uri_sans", f"{len(uris)} URI SANs (X509-SVID 2, 5.2)")
    if _is_ca(leaf):
        raise _Refused("leaf_is_ca", "leaf has basicConstraints cA true (X509-SVID 4.1, 5.2)")
    ku = _ext(leaf, x509.KeyUsage)
    if ku is None or not ku.critical:
        raise _Refused("leaf_key_usage", "leaf without a critical key usage extension (X509-SVID 4.3)")
    if not ku.value.digital_signature:
        raise _Refused("leaf_key_usage", "leaf key usage lacks digitalSignature (X509-SVID 4.3)")
    if ku.value.key_cert_sign or ku.value.crl_sign:
        raise _Refused("leaf_key_usage", "leaf key usage sets keyCertSign or cRLSign (X509-SVID 4.3, 5.2)")
    eku = _ext(leaf, x509.ExtendedKeyUsage)
    if eku is not None and not {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku.value):
        raise _Refused("leaf_key_usage", "extended key usage without serverAuth and clientAuth (X509-SVID 4.4)")
    try:
        _td, segs = parse_id(uris[0])
    except SpiffeError as e:
        raise _Refused("bad_spiffe_id", str(e)) from None
    if not segs:
        raise _Refused("bad_spiffe_id", f"{uris[0]!r}: a leaf's SPIFFE ID needs a path (X509-SVID 3.1)")
    return uris[0]


def _workload_rules(sid: str, trust_domain: str, expected_id: str | None) -> PeerVerdict:
    try:
        parsed = parse(sid)
    except SpiffeError as e:
        return _fail("bad_spiffe_id", str(e))
    if parsed.trust_domain != trust_domain:
        return _fail("trust_domain_mismatch", f"{sid} is not of trust domain {trust_domain}")
    if expected_id is not None and sid != expected_id:
        return _fail("unexpected_identity", f"{sid} is not {expected_id}")
    return PeerVerdict(True, sid)


# ---- entry points -------------------------------------------------------------------
def validate_leaf(leaf: x509.Certificate | None, trust_domain: str, expected_id: str | None = None) -> PeerVerdict:
    """The leaf rules alone, for a chain OpenSSL has already verified (signatures and
    validity windows against the trust bundle) during the handshake."""
    if leaf is None:
        return _fail("no_certificate")
    try:
        sid = _check_leaf(leaf)
    except _Refused as r:
        return _fail(r.reason, r.detail)
    return _workload_rules(sid, trust_domain, expected_id)


def svid_profile(chain: list[x509.Certificate]) -> PeerVerdict:
    """The X.509-SVID profile without time or trust: leaf rules for any SPIFFE ID, each
    further certificate a signing certificate (go-spiffe ``x509svid.Parse``)."""
    if not chain:
        return _fail("no_certificate")
    try:
        sid = _check_leaf(chain[0])
        for c in chain[1:MAX_CHAIN + 1]:
            _check_signing(c)
    except _Refused as r:
        return _fail(r.reason, r.detail)
    return PeerVerdict(True, sid)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """RFC 5280 6.1.3 (a)(1), (a)(4): the issuer's name and its signature."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _self_issued(c: x509.Certificate) -> bool:
    return c.subject == c.issuer


def _check_path(path: list[x509.Certificate], now: dt.datetime) -> None:
    """Every certificate on ``path`` (leaf first, root last) inside its window; every
    certificate above the leaf a signing certificate whose pathLenConstraint allows the
    non-self-issued intermediates below it (RFC 5280 4.2.1.9, 6.1.4 (l), (m))."""
    for c in path:
        _check_window(c, now)
    _check_extensions(path[0])
    below = 0  # non-self-issued intermediates between the leaf and the current certificate
    for i, c in enumerate(path[1:], start=1):
        _check_signing(c, anchor=i == len(path) - 1)
        limit = _ext(c, x509.BasicConstraints).value.path_length
        if limit is not None and below > limit:
            raise _Refused("untrusted", f"{_name(c)}: pathLenConstraint {limit} with {below} intermediate(s) below")
        if i < len(path) - 1 and not _self_issued(c):
            below += 1


def _paths(cert, pool, roots, path, out, budget) -> None:
    """Every path from ``cert`` through ``pool`` to a root (depth-first, bounded)."""
    if budget[0] <= 0:
        return
    budget[0] -= 1
    for r in roots:
        if _issued_by(cert, r):
            out.append(path + [r])
    if len(path) > MAX_CHAIN:
        return
    for c in pool:
        if all(c is not p for p in path) and _issued_by(cert, c):
            _paths(c, pool, roots, path + [c], out, budget)


def validate_peer(chain: list[x509.Certificate], roots: list[x509.Certificate], trust_domain: str,
                  now: dt.datetime, expected_id: str | None = None) -> PeerVerdict:
    """A presented chain (leaf first, intermediates in any order) against the bundle."""
    if not chain:
        return _fail("no_certificate")
    if len(chain) > MAX_CHAIN:
        return _fail("untrusted", f"{len(chain)} certificates presented, at most {MAX_CHAIN}")
    leaf = chain[0]
    # the order of the handshake (OpenSSL's chain verification, then validate_leaf), so
    # both places give one certificate the same reason
    try:
        for c in chain:
            _window(c)
    except _Refused as r:
        return _fail(r.reason, r.detail)
    paths: list[list[x509.Certificate]] = []
    _paths(leaf, chain[1:], roots, [leaf], paths, [64])
    if not paths:
        return _fail("untrusted", f"{_name(leaf)} does not chain to a root of the trust bundle")
    first: _Refused | None = None
    for p in paths:  # one sound path is enough; otherwise the first path's reason
        try:
            _check_path(p, now)
        except _Refused as r:
            first = first or r
            continue
        return validate_leaf(leaf, trust_domain, expected_id)
    return _fail(first.reason, first.detail)


def load_der_chain(ders: list[bytes]) -> list[x509.Certificate]:
    """DER certificates -> objects; raises ``_Refused`` (bad_validity when the validity
    field is what does not parse, malformed_certificate otherwise)."""
    out = []
    for d in ders:
        try:
            out.append(x509.load_der_x509_certificate(d))
        except ValueError as e:
            raise _Refused("bad_validity" if "Validity" in str(e) else "malformed_certificate", str(e)) from None
    return out


def validate_der(chain_der: list[bytes], roots_der: list[bytes], trust_domain: str, now: dt.datetime,
                 expected_id: str | None = None) -> PeerVerdict:
    """``validate_peer`` on DER bytes: the interface a second implementation (the native
    core) offers too, so the same vector table runs against both."""
    try:
        chain, roots = load_der_chain(chain_der), load_der_chain(roots_der)
    except _Refused as r:
        return _fail(r.reason, r.detail)
    return validate_peer(chain, roots, trust_domain, now, expected_id)


def svid_profile_der(chain_der: list[bytes]) -> PeerVerdict:
    try:
        chain = load_der_chain(chain_der)
    except _Refused as r:
        return _fail(r.reason, r.detail)
    return svid_profile(chain)


# OpenSSL X509_V_ERR_* codes -> our reasons (the chain is verified inside the handshake).
# A non-CA or keyCertSign-less intermediate (24, 32, 37, 79, 82, 92) is ``untrusted``.
OPENSSL_VERIFY = {9: "not_yet_valid", 10: "expired", 13: "bad_validity", 14: "bad_validity",
                  2: "untrusted", 7: "untrusted", 18: "untrusted", 19: "untrusted", 20: "untrusted",
                  21: "untrusted", 24: "untrusted", 25: "untrusted", 26: "untrusted", 27: "untrusted",
                  28: "untrusted", 32: "untrusted", 37: "untrusted", 79: "untrusted", 82: "untrusted",
                  92: "untrusted", 34: "unknown_critical_extension", 39: "leaf_key_usage"}


def reason_from_tls_error(verify_code: int | None, text: str) -> str:
    """A named reason for a failed handshake, from OpenSSL's verify code and message."""
    if verify_code:
        return OPENSSL_VERIFY.get(verify_code, "untrusted")
    t = text.upper()
    if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in t or "CERTIFICATE_REQUIRED" in t:
        return "no_certificate"
    if "UNSUPPORTED_PROTOCOL" in t or "VERSION" in t and "WRONG_VERSION_NUMBER" not in t:
        return "tls_version"
    if "WRONG_VERSION_NUMBER" in t or "HTTP_REQUEST" in t or "RECORD_LAYER" in t or "PACKET_LENGTH" in t:
        return "not_tls"
    if "CERTIFICATE_VERIFY_FAILED" in t or "UNKNOWN_CA" in t or "BAD_CERTIFICATE" in t:
        return "untrusted"
    return "handshake_failed"
