"""Certificates for tests: a small PKI and deliberately invalid SVIDs, each of which a
peer must reject with its named reason."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from agent.identity import ca


@dataclass
class Pki:
    trust_domain: str
    root: object
    root_key: object
    node: object
    node_key: object

    @property
    def bundle_pem(self) -> bytes:
        return ca.cert_pem(self.root)

    def svid(self, spiffe_id: str, now: dt.datetime | None = None, **kw) -> tuple[bytes, bytes]:
        now = now or dt.datetime.now(dt.UTC)
        cert, key = ca.make_svid(spiffe_id, self.node, self.node_key, now, **kw)
        return ca.cert_pem(cert, self.node), ca.key_pem(key)


def make_pki(trust_domain: str = "cluster.local", now: dt.datetime | None = None) -> Pki:
    now = now or dt.datetime.now(dt.UTC)
    root, rk = ca.make_root(trust_domain, now)
    node, nk = ca.make_intermediate(root, rk, "node-t", trust_domain, now)
    return Pki(trust_domain, root, rk, node, nk)


def bad_svids(pki: Pki, good_id: str) -> dict[str, tuple[bytes, bytes]]:
    """reason -> (chain PEM, key PEM) of an SVID that must be rejected for that reason."""
    now = dt.datetime.now(dt.UTC)
    other = make_pki(pki.trust_domain, now)
    td2 = make_pki("evil.local", now)
    return {
        "expired": pki.svid(good_id, now - dt.timedelta(days=3), ttl=dt.timedelta(hours=1)),
        "not_yet_valid": pki.svid(good_id, now, not_before=now + dt.timedelta(hours=1)),
        "untrusted": other.svid(good_id),
        "trust_domain_mismatch": pki.svid(good_id.replace(pki.trust_domain, "evil.local")),
        "multiple_uri_sans": pki.svid(good_id, uris=[good_id, good_id + "x"]),
        "no_uri_san": pki.svid(good_id, uris=[]),
        "leaf_is_ca": pki.svid(good_id, ca=True),
        "untrusted_other_domain_root": td2.svid(good_id.replace(pki.trust_domain, "evil.local")),
    }
