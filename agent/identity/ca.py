"""Certificate authority operations with ``cryptography``: roots, node intermediates
and X.509-SVIDs. Pure: every function takes ``now``; nothing here reads the clock or
touches files (``store`` does)."""

from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# SPEC.md: X.509-SVIDs are ECDSA P-256 leaves with a 24 h default lifetime.
SVID_TTL = dt.timedelta(hours=24)
ROOT_TTL = dt.timedelta(days=3650)
NODE_TTL = dt.timedelta(days=365)
# Certificates are valid from a little before "now": clocks of two hosts differ.
BACKDATE = dt.timedelta(minutes=5)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _builder(subject: x509.Name, issuer: x509.Name, pub, now: dt.datetime, ttl: dt.timedelta) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + ttl)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False))


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                         encipher_only=False, decipher_only=False)


def make_root(trust_domain: str, now: dt.datetime, ttl: dt.timedelta = ROOT_TTL, key=None):
    key = key or new_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hostmesh"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"hostmesh root {trust_domain} {now:%Y%m%d%H%M%S}")])
    cert = (_builder(name, name, key.public_key(), now, ttl)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_ca_usage(), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_intermediate(issuer: x509.Certificate, issuer_key, node: str, trust_domain: str, now: dt.datetime,
                      ttl: dt.timedelta = NODE_TTL, key=None):
    key = key or new_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hostmesh"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"hostmesh node {node}")])
    not_after = min(now + ttl, issuer.not_valid_after_utc)
    cert = (_builder(name, issuer.subject, key.public_key(), now, not_after - now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_usage(), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
            .sign(issuer_key, hashes.SHA256()))
    return cert, key


def make_svid(spiffe_id: str, issuer: x509.Certificate, issuer_key, now: dt.datetime,
              ttl: dt.timedelta = SVID_TTL, key=None, *, uris: list[str] | None = None, ca: bool = False,
              not_before: dt.datetime | None = None, public_key=None):
    """A leaf X.509-SVID: one URI SAN, not a CA, digitalSignature, server+client auth.

    ``public_key``: sign a key that stays elsewhere (the CA service signing a CSR's key;
    the returned key is then None). ``uris``/``ca``/``not_before`` exist so tests can mint
    deliberately invalid leaves.
    """
    if public_key is None:
        key = key or new_key()
        public_key = key.public_key()
    start = not_before or (now - BACKDATE)
    end = min(now + ttl, issuer.not_valid_after_utc)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hostmesh")]))
         .issuer_name(issuer.subject).public_key(public_key).serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(max(end, start + dt.timedelta(seconds=1)))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=False,
                                      encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                        critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False))
    names = [x509.UniformResourceIdentifier(u) for u in (uris if uris is not None else [spiffe_id])]
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=True)
    return b.sign(issuer_key, hashes.SHA256()), key


def make_node_credential(issuer: x509.Certificate, issuer_key, node: str, now: dt.datetime,
                         ttl: dt.timedelta = NODE_TTL, key=None):
    """A node's client certificate for the CA service: subject O=hostmesh node credential,
    CN=<node>; clientAuth only, no URI SAN (so no tunnel peer takes it for an SVID), no
    signing power. ``agent.casvc.decide.authenticate_certificate`` checks exactly this."""
    key = key or new_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hostmesh node credential"),
                      x509.NameAttribute(NameOID.COMMON_NAME, node)])
    not_after = min(now + ttl, issuer.not_valid_after_utc)
    cert = (_builder(name, issuer.subject, key.public_key(), now, not_after - now)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_usage(), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
            .sign(issuer_key, hashes.SHA256()))
    return cert, key


def make_server_cert(issuer: x509.Certificate, issuer_key, names: list[str], now: dt.datetime,
                     ttl: dt.timedelta = NODE_TTL, key=None):
    """The CA service's own TLS certificate (serverAuth; DNS/IP SANs, no URI SAN)."""
    key = key or new_key()
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    not_after = min(now + ttl, issuer.not_valid_after_utc)
    cert = (_builder(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hostmesh"),
                                x509.NameAttribute(NameOID.COMMON_NAME, "hostmesh ca service")]),
                     issuer.subject, key.public_key(), now, not_after - now)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_usage(), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(issuer_key, hashes.SHA256()))
    return cert, key


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                         encipher_only=False, decipher_only=False)


def make_csr(spiffe_id: str, key=None, *, uris: list[str] | None = None):
    """A CSR as Istio's clients send it: no subject, one critical URI SAN (the SPIFFE ID).
    ``uris`` lets tests ask for several or none."""
    key = key or new_key()
    names = [x509.UniformResourceIdentifier(u) for u in (uris if uris is not None else [spiffe_id])]
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=True)
    return b.sign(key, hashes.SHA256()), key


def csr_pem(csr) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)


def uri_sans(cert) -> list[str]:
    """The URI SANs of a certificate or CSR (empty without the extension)."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        return []


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """``issuer`` signed ``cert`` (names and signature)."""
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except Exception:  # noqa: BLE001 - InvalidSignature, ValueError, TypeError: not issued by it
        return False


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_certs(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def load_key(pem: bytes):
    return serialization.load_pem_private_key(pem, password=None)
