"""The CA service's material in force: its settings, the signing CA read from disk and
checked, and the pure decision's ``View``. Built whole or not at all (a reload that
fails keeps the previous ``Authority``); signs what ``decide.authorize`` allowed.
Never decides who may have a certificate and never talks to the network."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from agent.casvc import decide
from agent.casvc.settings import Settings, parse_settings
from agent.config import ConfigError
from agent.identity import ca


@dataclass(frozen=True)
class Authority:
    settings: Settings
    view: decide.View
    signer: x509.Certificate
    signer_key: object
    intermediates_pem: list[str]  # the signer itself when it is not a root
    bundle_pem: str  # the root bundle, last element of every cert_chain
    node_roots: list[x509.Certificate]
    node_roots_pem: bytes
    server_cert_pem: bytes
    server_key_pem: bytes

    def sign(self, d: decide.Decision, now: dt.datetime) -> tuple[x509.Certificate, list[str]]:
        """The SVID for an allowed decision: (leaf, cert_chain as Istio returns it)."""
        assert d.ok and d.spiffe_id
        leaf, _ = ca.make_svid(d.spiffe_id, self.signer, self.signer_key, now, dt.timedelta(seconds=d.ttl_s),
                               public_key=d.public_key)
        return leaf, [ca.cert_pem(leaf).decode(), *self.intermediates_pem, self.bundle_pem]


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what}: {e.strerror}") from None


def _certs(path: str, what: str) -> list[x509.Certificate]:
    try:
        return ca.load_certs(_read(path, what))
    except ValueError as e:
        raise ConfigError(f"{path}: {what} is not PEM certificates ({e})") from None


def load_authority(config_path: str, now: dt.datetime) -> Authority:
    """Everything the service needs, read and cross-checked; ConfigError names the file."""
    s = parse_settings(_read(config_path, "the configuration").decode(errors="replace"), config_path)
    signer = _certs(s.signing.cert, "signing certificate")[0]
    try:
        key = ca.load_key(_read(s.signing.key, "signing key"))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{s.signing.key}: not an unencrypted PEM private key ({e})") from None
    if key.public_key().public_numbers() != signer.public_key().public_numbers():
        raise ConfigError(f"{s.signing.key} is not the key of {s.signing.cert}")
    if not (signer.not_valid_before_utc <= now <= signer.not_valid_after_utc):
        raise ConfigError(f"{s.signing.cert}: the signing certificate is not valid now")
    bundle_pem = _read(s.signing.bundle, "root bundle") if s.signing.bundle else ca.cert_pem(signer)
    roots = _certs(s.signing.bundle, "root bundle") if s.signing.bundle else [signer]
    self_signed = signer.issuer == signer.subject
    if not any(r == signer or ca.issued_by(signer, r) for r in roots):
        raise ConfigError(f"{s.signing.cert} is not issued by a root in {s.signing.bundle}")
    node_roots_path = s.node_credential_roots or s.signing.bundle or s.signing.cert
    node_roots = _certs(node_roots_path, "node credential roots")
    server, server_key = ca.make_server_cert(signer, key, s.server_names, now)
    view = decide.View(s.trust_domain, {n: frozenset(ids) for n, ids in s.nodes.items()}, s.max_ttl_s,
                       s.default_ttl_s)
    return Authority(s, view, signer, key, [] if self_signed else [ca.cert_pem(signer).decode()],
                     bundle_pem.decode(), node_roots, ca.cert_pem(*node_roots),
                     ca.cert_pem(server, *([] if self_signed else [signer])), ca.key_pem(server_key))
