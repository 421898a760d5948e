"""Peer validation per the SPIFFE X.509-SVID spec, with a named reason for every
rejection. Pure: certificates and ``now`` in, a verdict out.

The chain itself is verified with ``cryptography`` (signatures via
``verify_directly_issued_by``, validity windows, CA constraints) against the roots of
the trust bundle — several may be trusted at once, for rotation. Then the leaf rules:
exactly one URI SAN, a ``spiffe://`` workload ID of our trust domain, not a CA, and —
on the client side — the identity we expected.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509

from agent.identity.spiffe import SpiffeError, parse

REASONS = ("no_certificate", "expired", "not_yet_valid", "untrusted", "no_uri_san", "multiple_uri_sans",
           "bad_spiffe_id", "trust_domain_mismatch", "leaf_is_ca", "unexpected_identity", "tls_version",
           "not_tls", "handshake_timeout", "handshake_failed")
# Intermediates a chain may carry before we stop looking (node intermediate + spare).
MAX_CHAIN = 4


@dataclass(frozen=True)
class PeerVerdict:
    ok: bool
    spiffe_id: str | None = None
    reason: str = ""


def _fail(reason: str) -> PeerVerdict:
    assert reason in REASONS, reason
    return PeerVerdict(False, None, reason)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, Exception):  # noqa: BLE001 - InvalidSignature and friends
        return False


def validate_peer(chain: list[x509.Certificate], roots: list[x509.Certificate], trust_domain: str,
                  now: dt.datetime, expected_id: str | None = None) -> PeerVerdict:
    if not chain:
        return _fail("no_certificate")
    leaf = chain[0]
    for c in chain[:MAX_CHAIN]:
        if now < c.not_valid_before_utc:
            return _fail("not_yet_valid")
        if now > c.not_valid_after_utc:
            return _fail("expired")
    # walk leaf -> intermediates -> a trusted root
    cur, trusted = leaf, False
    for _ in range(MAX_CHAIN):
        root = next((r for r in roots if r.subject == cur.issuer and _issued_by(cur, r)), None)
        if root is not None:
            trusted = not (now < root.not_valid_before_utc or now > root.not_valid_after_utc)
            break
        nxt = next((c for c in chain[1:] if c.subject == cur.issuer and _is_ca(c) and _issued_by(cur, c)), None)
        if nxt is None or nxt is cur:
            break
        cur = nxt
    if not trusted:
        return _fail("untrusted")
    return validate_leaf(leaf, trust_domain, expected_id)


def validate_leaf(leaf: x509.Certificate | None, trust_domain: str, expected_id: str | None = None) -> PeerVerdict:
    """The leaf rules alone, for a chain OpenSSL has already verified (signatures and
    validity windows against the trust bundle) during the handshake."""
    if leaf is None:
        return _fail("no_certificate")
    try:
        uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if not uris:
        return _fail("no_uri_san")
    if len(uris) > 1:
        return _fail("multiple_uri_sans")
    if _is_ca(leaf):
        return _fail("leaf_is_ca")
    try:
        sid = parse(uris[0])
    except SpiffeError:
        return _fail("bad_spiffe_id")
    if sid.trust_domain != trust_domain:
        return _fail("trust_domain_mismatch")
    if expected_id is not None and uris[0] != expected_id:
        return _fail("unexpected_identity")
    return PeerVerdict(True, uris[0], "")


# OpenSSL X509_V_ERR_* codes -> our reasons (the chain is verified inside the handshake).
OPENSSL_VERIFY = {9: "not_yet_valid", 10: "expired", 13: "not_yet_valid", 14: "expired",
                  2: "untrusted", 18: "untrusted", 19: "untrusted", 20: "untrusted", 21: "untrusted",
                  7: "untrusted", 24: "leaf_is_ca", 26: "untrusted", 79: "leaf_is_ca"}


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
