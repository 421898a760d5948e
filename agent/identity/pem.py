"""SVID and trust-bundle files: PEM bytes -> certificates and key, each failure a named
reason (go-spiffe's ``x509svid.Parse`` / ``x509bundle.Parse`` cases). Pure: bytes in,
objects or ``PemError`` out; reading the files is the caller's business. It never
decides trust: ``agent.identity.validate`` does, on what this returns.
"""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization

# File problems (not peer verdicts: they surface as renewal or reload errors).
_KEY_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]*PRIVATE KEY)-----.*?-----END \1-----", re.S)
FILE_REASONS = ("malformed_certificate", "bad_validity", "no_certificate", "malformed_key", "key_mismatch")


class PemError(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        assert reason in FILE_REASONS, reason
        super().__init__(message)
        self.reason = reason


def _has_pem(data: bytes, label: bytes) -> bool:
    return b"-----BEGIN " + label in data


def parse_certs(data: bytes, what: str = "certificates") -> list[x509.Certificate]:
    """Every CERTIFICATE block of ``data`` (other blocks, e.g. a key, are skipped)."""
    if not _has_pem(data, b"CERTIFICATE-----"):
        raise PemError("no_certificate", f"{what}: no PEM CERTIFICATE block")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        reason = "bad_validity" if "Validity" in str(e) else "malformed_certificate"
        raise PemError(reason, f"{what}: not a valid certificate: {e}") from None


def parse_bundle(data: bytes, what: str = "trust bundle") -> list[x509.Certificate]:
    """A trust bundle: zero or more certificates. Empty (or blank) is an empty bundle,
    text that is not PEM or a corrupted certificate is an error."""
    if not data.strip():
        return []
    return parse_certs(data, what)


def parse_key(data: bytes, what: str = "key"):
    """The first PRIVATE KEY block of ``data`` (a file may hold the certificate too)."""
    m = _KEY_BLOCK.search(data)
    if m is None:
        raise PemError("malformed_key", f"{what}: no PEM PRIVATE KEY block")
    try:
        return serialization.load_pem_private_key(m.group(0), password=None)
    except (ValueError, TypeError) as e:
        raise PemError("malformed_key", f"{what}: not a valid unencrypted private key: {e}") from None


def parse_svid(cert_pem: bytes, key_pem: bytes, what: str = "SVID"):
    """(chain, key) of an X.509-SVID: leaf first, and the key must be the leaf's."""
    chain = parse_certs(cert_pem, f"{what} certificate")
    key = parse_key(key_pem, f"{what} key")
    if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            chain[0].public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo):
        raise PemError("key_mismatch", f"{what}: the key is not the key of the leaf certificate")
    return chain, key
