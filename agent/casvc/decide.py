"""Who gets which certificate: the CA service's decisions, pure (no I/O, no clock).

``authorize(request, caller, view, now) -> Decision`` in three steps, as istiod orders
them: the caller must be a trusted node credential (else ``UNAUTHENTICATED``); the
request must be well formed (a CSR with an ECDSA P-256 key and exactly one URI SAN, a
workload SPIFFE ID of our trust domain, a lifetime within the maximum; else
``INVALID_ARGUMENT``); the requested identity must have a workload on the caller's node
in *the CA's own view* (else ``PERMISSION_DENIED``). A node's own registrations never
widen the view: it comes from the CA's configuration or from the Kubernetes API.
Every refusal carries a named reason (``REASONS``) for the audit line, the counter and
the gRPC status message. This module never signs, never reads a file, never logs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.identity import ca, spiffe

# reason -> gRPC status code name. UNAUTHENTICATED: who is asking is not established;
# INVALID_ARGUMENT: the request itself is wrong (istiod answers CSR/TTL errors so);
# PERMISSION_DENIED: a known node asks for an identity that has no workload on it;
# UNAVAILABLE: the Kubernetes API could not be asked (the caller retries).
REASONS: dict[str, str] = {
    "no_credential": "UNAUTHENTICATED",
    "credential_expired": "UNAUTHENTICATED",
    "credential_untrusted": "UNAUTHENTICATED",
    "credential_not_node": "UNAUTHENTICATED",
    "unknown_node": "UNAUTHENTICATED",
    "token_invalid": "UNAUTHENTICATED",
    "token_not_trusted_account": "UNAUTHENTICATED",
    "token_pod_unknown": "UNAUTHENTICATED",
    "token_review_unavailable": "UNAVAILABLE",
    "malformed_request": "INVALID_ARGUMENT",
    "csr_malformed": "INVALID_ARGUMENT",
    "csr_bad_signature": "INVALID_ARGUMENT",
    "csr_unsupported_key": "INVALID_ARGUMENT",
    "csr_san_count": "INVALID_ARGUMENT",
    "csr_not_spiffe": "INVALID_ARGUMENT",
    "csr_trust_domain": "INVALID_ARGUMENT",
    "validity_too_long": "INVALID_ARGUMENT",
    "impersonation_mismatch": "PERMISSION_DENIED",
    "identity_not_on_node": "PERMISSION_DENIED",
}
# A node credential says so in its subject (and carries no URI SAN, so a tunnel peer
# refuses it as an SVID: ``no_uri_san``).
NODE_CREDENTIAL_ORG = "hostmesh node credential"
# CSRs larger than this are refused before parsing (an ECDSA P-256 CSR is ~500 bytes).
MAX_CSR_BYTES = 8 * 1024


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the node it speaks for, and how that was established."""

    node: str
    via: str  # "certificate" or "token:<ns>/<pod>"


@dataclass(frozen=True)
class View:
    """The CA's own view of the mesh: which identities have a workload on which node."""

    trust_domain: str
    identities_on: Mapping[str, frozenset[str]]  # node name -> SPIFFE IDs
    max_ttl_s: int = 24 * 3600
    default_ttl_s: int = 24 * 3600


@dataclass(frozen=True)
class Request:
    csr_pem: str
    validity_s: int
    impersonated: str | None


@dataclass(frozen=True)
class Decision:
    ok: bool
    reason: str = ""
    message: str = ""
    spiffe_id: str | None = None
    ttl_s: int = 0
    public_key: object = None
    node: str | None = None

    @property
    def code(self) -> str:
        return "OK" if self.ok else REASONS[self.reason]


def refuse(reason: str, message: str, node: str | None = None) -> Decision:
    assert reason in REASONS, reason
    return Decision(False, reason, message, node=node)


def authenticate_certificate(chain: list[x509.Certificate], roots: list[x509.Certificate],
                             known_nodes, now: dt.datetime) -> Caller | Decision:
    """A node client certificate (``hostmesh ca issue --node N --credential``): directly
    issued by a trusted root, in its validity window, marked as a node credential,
    for a node the CA knows."""
    if not chain:
        return refuse("no_credential", "no node credential: present a node client certificate or a bearer token")
    leaf = chain[0]
    if not (leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc):
        return refuse("credential_expired", f"node credential valid {leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"
                                            f" .. {leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
    if not any(ca.issued_by(leaf, r) for r in roots):
        return refuse("credential_untrusted", f"node credential {leaf.subject.rfc4514_string()} is not issued by a "
                                              "root this CA trusts for node credentials")
    orgs = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    names = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if orgs != [NODE_CREDENTIAL_ORG] or len(names) != 1 or _is_ca(leaf) or ca.uri_sans(leaf) or not _client_auth(leaf):
        return refuse("credential_not_node", f"{leaf.subject.rfc4514_string()} is not a node credential")
    node = str(names[0])
    if node not in known_nodes:
        return refuse("unknown_node", f"node {node!r} is not in this CA's configuration", node)
    return Caller(node, "certificate")


def authenticate_token(review: Mapping, trusted_accounts: frozenset[str], pod_node: Mapping[tuple[str, str], str],
                       ) -> Caller | Decision:
    """A TokenReview's ``status`` (audience ``istio-ca``): the caller's service account must
    be a trusted node account (istiod's ``CA_TRUSTED_NODE_ACCOUNTS``, ``ns/sa``), and the
    pod named in the token (name and UID) must exist; its node is the caller's node."""
    if not review.get("authenticated"):
        return refuse("token_invalid", f"token not authenticated: {review.get('error') or 'TokenReview refused it'}")
    user = review.get("user") or {}
    parts = str(user.get("username", "")).split(":")
    if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
        return refuse("token_invalid", f"{user.get('username')!r} is not a service account")
    account = f"{parts[2]}/{parts[3]}"
    if account not in trusted_accounts:
        return refuse("token_not_trusted_account", f"service account {account} is not a trusted node account")
    extra = user.get("extra") or {}
    name = (extra.get("authentication.kubernetes.io/pod-name") or [""])[0]
    uid = (extra.get("authentication.kubernetes.io/pod-uid") or [""])[0]
    node = pod_node.get((name, uid))
    if not name or node is None:
        return refuse("token_pod_unknown", f"the token's pod {parts[2]}/{name or '?'} (uid {uid or '?'}) is not running")
    return Caller(node, f"token:{parts[2]}/{name}")


def check_csr(pem: str, trust_domain: str) -> tuple[str, object] | Decision:
    """(SPIFFE ID, public key) of a well-formed CSR, else the refusal."""
    if len(pem) > MAX_CSR_BYTES:
        return refuse("csr_malformed", f"CSR of {len(pem)} bytes (limit {MAX_CSR_BYTES})")
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except (ValueError, UnicodeEncodeError) as e:
        return refuse("csr_malformed", f"not a PEM certificate request: {e}")
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return refuse("csr_unsupported_key", f"RSA-{key.key_size} key: SVIDs are ECDSA P-256")
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        curve = getattr(getattr(key, "curve", None), "name", type(key).__name__)
        return refuse("csr_unsupported_key", f"{curve} key: SVIDs are ECDSA P-256")
    if not csr.is_signature_valid:
        return refuse("csr_bad_signature", "the CSR's signature does not verify with its own key")
    try:
        sans = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        sans = []
    except ValueError as e:
        return refuse("csr_malformed", f"unreadable extensions: {e}")
    if len(sans) != 1 or not isinstance(sans[0], x509.UniformResourceIdentifier):
        return refuse("csr_san_count", f"{len(sans)} subject alternative names: exactly one URI SAN, the SPIFFE ID")
    uri = sans[0].value
    try:
        sid = spiffe.parse(uri)
    except spiffe.SpiffeError as e:
        return refuse("csr_not_spiffe", str(e))
    if sid.trust_domain != trust_domain:
        return refuse("csr_trust_domain", f"{uri}: trust domain is not {trust_domain}")
    return uri, key


def check_ttl(requested: int, view: View) -> int | Decision:
    if requested < 0:
        return refuse("malformed_request", f"validity_duration {requested} is negative")
    if requested == 0:
        return min(view.default_ttl_s, view.max_ttl_s)
    if requested > view.max_ttl_s:
        return refuse("validity_too_long", f"requested {requested} s, the maximum is {view.max_ttl_s} s")
    return requested


def authorize(req: Request, caller: Caller | Decision, view: View) -> Decision:
    """The whole decision for one CreateCertificate call."""
    if isinstance(caller, Decision):
        return caller
    csr = check_csr(req.csr_pem, view.trust_domain)
    if isinstance(csr, Decision):
        return Decision(**{**csr.__dict__, "node": caller.node})
    uri, key = csr
    ttl = check_ttl(req.validity_s, view)
    if isinstance(ttl, Decision):
        return Decision(**{**ttl.__dict__, "node": caller.node})
    if req.impersonated is not None and req.impersonated != uri:
        return refuse("impersonation_mismatch", f"ImpersonatedIdentity {req.impersonated} but the CSR is for {uri}",
                      caller.node)
    if uri not in view.identities_on.get(caller.node, frozenset()):
        return refuse("identity_not_on_node", f"{uri} has no workload on node {caller.node}", caller.node)
    return Decision(True, spiffe_id=uri, ttl_s=ttl, public_key=key, node=caller.node)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _client_auth(cert: x509.Certificate) -> bool:
    try:
        return ExtendedKeyUsageOID.CLIENT_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
