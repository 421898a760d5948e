"""SPIFFE IDs for workloads: ``spiffe://<trust-domain>/ns/<namespace>/sa/<account>``.

Pure parsing and formatting, strict per the SPIFFE ID spec (lowercase trust domain of
letters, digits, dots, dashes and underscores; path segments of unreserved characters,
no empty, ``.`` or ``..`` segments), plus the SNI a client sends so that the server can
pick the destination workload's SVID before the handshake completes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TD = re.compile(r"^[a-z0-9._-]{1,255}$")
_SEG = re.compile(r"^[A-Za-z0-9._-]+$")
# SNI: a DNS name; labels of at most 63 characters. "<sa>.<ns>.<td>.spiffe.hostmesh"
# would not survive dots inside names, so names are hex-encoded when needed.
SNI_SUFFIX = "hostmesh.internal"


class SpiffeError(ValueError):
    pass


@dataclass(frozen=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


def parse(uri: str) -> SpiffeId:
    """A workload SPIFFE ID; raises SpiffeError naming what is wrong."""
    if not isinstance(uri, str) or not uri.startswith("spiffe://"):
        raise SpiffeError(f"{uri!r}: not a spiffe:// URI")
    rest = uri[len("spiffe://"):]
    td, _, path = rest.partition("/")
    if not _TD.match(td):
        raise SpiffeError(f"{uri!r}: invalid trust domain {td!r}")
    segs = path.split("/")
    for s in segs:
        if not s or s in (".", "..") or not _SEG.match(s):
            raise SpiffeError(f"{uri!r}: invalid path segment {s!r}")
    if len(segs) != 4 or segs[0] != "ns" or segs[2] != "sa":
        raise SpiffeError(f"{uri!r}: expected /ns/<namespace>/sa/<service-account>")
    return SpiffeId(td, segs[1], segs[3])


def format_id(trust_domain: str, namespace: str, service_account: str) -> str:
    s = f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
    parse(s)
    return s


def _enc(s: str) -> str:
    return s if re.match(r"^[a-z0-9-]{1,60}$", s) and not s.startswith("-") else "x" + s.encode().hex()[:60]


def sni_for(namespace: str, service_account: str, trust_domain: str) -> str:
    """A DNS-safe SNI naming the destination identity (the server maps it back)."""
    return f"{_enc(service_account)}.{_enc(namespace)}.{SNI_SUFFIX}"
