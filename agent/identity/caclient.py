"""The agent's client of a CA service speaking Istio's protocol (``hostmesh ca serve``
or istiod): a fresh ECDSA P-256 key made here, a CSR with the one SPIFFE ID, the call
with ``ImpersonatedIdentity``, and the answer checked before anyone uses it. The key
never leaves this process. The call is one unary gRPC over the native core's HTTP/2 and
TLS (``dataplane.grpc_unary``, dataplane/src/grpc.rs; the messages in ``cawire``), so the
agent loads neither grpcio nor protobuf (docs/decisions/0005). Blocking, with the GIL
released; the identity manager runs it in a worker thread. Each call opens its own TLS
connection (a renewal per identity per half-lifetime does not need a standing channel).
Decides nothing about when to ask or how often to retry (``schedule`` does).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from agent import dataplane
from agent.identity import ca, cawire

# One call's deadline: a CA that answers slower than this is treated as unreachable.
CALL_TIMEOUT_S = 10.0


class CaError(RuntimeError):
    """A failed call; ``code`` is the gRPC status name (UNAVAILABLE, PERMISSION_DENIED...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"CA service: {code}: {message}")
        self.code = code


@dataclass(frozen=True)
class CaTarget:
    address: str  # host:port
    root_pem: bytes  # verifies the CA service's TLS certificate
    cert_pem: bytes | None = None  # node client credential (mutual TLS)
    key_pem: bytes | None = None
    token_path: str | None = None  # bearer token file (istiod: audience istio-ca)
    server_name: str | None = None  # TLS name to expect, when not the address's host
    cluster_id: str | None = None  # istiod's "clusterid" call metadata

    @classmethod
    def from_config(cls, c) -> CaTarget:
        read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
        return cls(c.ca_address, read(c.ca_root) or b"", read(c.ca_credential_cert), read(c.ca_credential_key),
                   c.ca_token_path, c.ca_server_name, c.ca_cluster_id)


class CaClient:
    def __init__(self, target: CaTarget) -> None:
        self.target = target

    def close(self) -> None:
        """Nothing stands between calls (each opens its own connection)."""

    def _metadata(self) -> list[tuple[str, str]]:
        md = []
        if self.target.token_path:
            md.append(("authorization", "Bearer " + Path(self.target.token_path).read_text().strip()))
        if self.target.cluster_id:
            md.append(("clusterid", self.target.cluster_id))
        return md

    def _hint(self, code: str) -> str:
        """A handshake the CA refused shows here only as UNAVAILABLE: say so when our
        own credential is the likely reason (the CA's audit log names it)."""
        if code != "UNAVAILABLE" or not self.target.cert_pem:
            return ""
        try:
            cert = ca.load_certs(self.target.cert_pem)[0]
        except ValueError:
            return " (the node credential is not a PEM certificate)"
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return (f" (this node's credential is valid {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} .. "
                    f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}: the CA service refuses it)")
        return ""

    def fetch(self, spiffe_id: str, ttl_s: int) -> tuple[bytes, bytes, x509.Certificate]:
        """(chain PEM: leaf + intermediates, key PEM, leaf) for ``spiffe_id``, or CaError."""
        csr, key = ca.make_csr(spiffe_id)
        req = cawire.encode_request(ca.csr_pem(csr).decode(), ttl_s, spiffe_id)
        t = self.target
        code, message, body = dataplane.grpc_unary(
            t.address, t.root_pem, cawire.METHOD, req, metadata=self._metadata(), timeout_s=CALL_TIMEOUT_S,
            server_name=t.server_name, cert_pem=t.cert_pem, key_pem=t.key_pem)
        if code != 0:
            name = cawire.status_name(code)
            raise CaError(name, message + self._hint(name))
        try:
            chain = cawire.decode_response(body)
        except ValueError as e:
            raise ValueError(f"CA service answered a malformed IstioCertificateResponse: {e}") from None
        leaf, chain_pem = check_response(chain, spiffe_id, key.public_key())
        return chain_pem, ca.key_pem(key), leaf


def check_response(chain: list[str], spiffe_id: str, public_key) -> tuple[x509.Certificate, bytes]:
    """The leaf and the chain to present (leaf + intermediates, without the root bundle);
    ValueError unless the leaf is for exactly ``spiffe_id`` and carries our key (ztunnel
    refuses a certificate for another identity the same way)."""
    if len(chain) < 1:
        raise ValueError("CA service answered an empty cert_chain")
    try:
        certs = [ca.load_certs(p.encode()) for p in chain]
    except ValueError as e:
        raise ValueError(f"CA service answered an unreadable cert_chain: {e}") from None
    leaf = certs[0][0]
    uris = ca.uri_sans(leaf)
    if uris != [spiffe_id]:
        raise ValueError(f"CA service issued a certificate for {uris or 'no URI SAN'}, not {spiffe_id}")
    if leaf.public_key().public_numbers() != public_key.public_numbers():
        raise ValueError("CA service issued a certificate for another key")
    # leaf and intermediates; the roots (self-signed, the last element) the agent trusts
    # from its own configuration, not from the answer
    middle = [c for group in certs[1:] for c in group if not _self_signed(c)]
    return leaf, ca.cert_pem(leaf, *middle)


def _self_signed(c: x509.Certificate) -> bool:
    return c.issuer == c.subject
