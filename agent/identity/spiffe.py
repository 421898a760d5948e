"""SPIFFE IDs: the grammar of SPIFFE-ID.md, the workload form hostmesh issues
(``spiffe://<trust-domain>/ns/<namespace>/sa/<account>``), and the SNI a client sends so
the server can pick the destination workload's SVID before the handshake completes.

Pure parsing and formatting. Every ID anywhere in the agent is parsed here, and every
pattern is applied with ``re.fullmatch``: ``$`` with ``re.match`` lets a trailing newline
through (``.../sa/web\\n``), which SPIFFE-ID.md's character set does not contain. This
module must never accept a string the grammar refuses (tests/unit/test_identity.py holds
a hypothesis property for it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "spiffe://"
# SPIFFE-ID.md 2.1: the host is lowercase letters, digits, dots, dashes, underscores;
# no userinfo, port or percent-encoding. 2.3: at most 255 bytes.
_TD = re.compile(r"[a-z0-9._-]{1,255}")
# SPIFFE-ID.md 2.2: segments of letters, digits, dots, dashes, underscores ("." and ".."
# are refused separately; empty segments and a trailing "/" fail the "+").
_SEG = re.compile(r"[A-Za-z0-9._-]+")
# SPIFFE-ID.md 2.3: implementations must support 2048 bytes; hostmesh refuses longer.
MAX_ID_BYTES = 2048
# SNI: a DNS name; labels of at most 63 characters. "<sa>.<ns>.<td>.spiffe.hostmesh"
# would not survive dots inside names, so names are hex-encoded when needed.
SNI_SUFFIX = "hostmesh.internal"
_DNS_LABEL = re.compile(r"[a-z0-9-]{1,60}")


class SpiffeError(ValueError):
    pass


@dataclass(frozen=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


def is_trust_domain(td: str) -> bool:
    return isinstance(td, str) and _TD.fullmatch(td) is not None


def parse_id(uri: str) -> tuple[str, tuple[str, ...]]:
    """Any SPIFFE ID per SPIFFE-ID.md: ``(trust domain, path segments)``; the root ID of
    a trust domain has no segments. Raises SpiffeError naming what is wrong."""
    if not isinstance(uri, str) or not uri.startswith(SCHEME):
        raise SpiffeError(f"{uri!r}: not a spiffe:// URI")
    if len(uri.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise SpiffeError(f"{uri[:40]!r}...: longer than {MAX_ID_BYTES} bytes (SPIFFE-ID.md 2.3)")
    rest = uri[len(SCHEME):]
    td, slash, path = rest.partition("/")
    if not _TD.fullmatch(td):
        raise SpiffeError(f"{uri!r}: invalid trust domain {td!r} (lowercase letters, digits, '.', '-', '_')")
    if not slash:
        return td, ()
    segs = tuple(path.split("/"))
    for s in segs:
        if s in (".", "..") or not _SEG.fullmatch(s):
            raise SpiffeError(f"{uri!r}: invalid path segment {s!r} (letters, digits, '.', '-', '_'; "
                              "not empty, '.' or '..')")
    return td, segs


def parse(uri: str) -> SpiffeId:
    """A workload SPIFFE ID (``/ns/<namespace>/sa/<service-account>``); raises SpiffeError."""
    td, segs = parse_id(uri)
    if len(segs) != 4 or segs[0] != "ns" or segs[2] != "sa":
        raise SpiffeError(f"{uri!r}: expected /ns/<namespace>/sa/<service-account>")
    return SpiffeId(td, segs[1], segs[3])


def parse_principal(principal: str) -> SpiffeId | None:
    """An Istio principal (``<td>/ns/<ns>/sa/<sa>``, with or without ``spiffe://``) as a
    workload ID, or None when it is not one."""
    if not isinstance(principal, str):
        return None
    try:
        return parse(principal if principal.startswith(SCHEME) else SCHEME + principal)
    except SpiffeError:
        return None


def format_id(trust_domain: str, namespace: str, service_account: str) -> str:
    s = f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
    parse(s)
    return s


def _enc(s: str) -> str:
    return s if _DNS_LABEL.fullmatch(s) and not s.startswith("-") else "x" + s.encode().hex()[:60]


def sni_for(namespace: str, service_account: str, trust_domain: str) -> str:
    """A DNS-safe SNI naming the destination identity (the server maps it back)."""
    return f"{_enc(service_account)}.{_enc(namespace)}.{SNI_SUFFIX}"
