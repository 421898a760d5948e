"""CA material on disk (`hostmesh ca`, the lab, Ansible): the layout of a CA directory.

``D/root.pem``, ``D/root.key`` (0600), ``D/bundle.pem`` (every trusted root; rotation
adds a root and keeps the old until ``retire_old_roots``), ``D/nodes/<node>/cert.pem`` +
``key.pem`` (the node intermediate, issued by the newest root), and
``D/nodes/<node>/credential/{cert,key}.pem`` (the node's client credential for the CA
service: no signing power; docs/identity.md, "The CA service").
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from agent.identity import ca


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def init_dir(d: Path, trust_domain: str = "cluster.local", rotate: bool = False) -> Path:
    d = Path(d)
    if (d / "root.pem").exists() and not rotate:
        raise FileExistsError(f"{d}/root.pem exists (use --rotate to add a new root)")
    d.mkdir(parents=True, exist_ok=True)
    cert, key = ca.make_root(trust_domain, _now())
    old = (d / "bundle.pem").read_bytes() if rotate and (d / "bundle.pem").exists() else b""
    write_private(d / "root.key", ca.key_pem(key))
    (d / "root.pem").write_bytes(ca.cert_pem(cert))
    (d / "bundle.pem").write_bytes(old + ca.cert_pem(cert))
    (d / "trust_domain").write_text(trust_domain + "\n")
    return d / "root.pem"


def retire_old_roots(d: Path) -> int:
    """The last step of a root rotation: the bundle keeps only the current root (after
    every node runs on an intermediate from it). Returns how many roots were dropped."""
    d = Path(d)
    current = ca.load_certs((d / "root.pem").read_bytes())[0]
    roots = ca.load_certs((d / "bundle.pem").read_bytes())
    (d / "bundle.pem").write_bytes(ca.cert_pem(current))
    return sum(1 for r in roots if r != current)


def trust_domain_of(d: Path) -> str:
    try:
        return (Path(d) / "trust_domain").read_text().strip()
    except FileNotFoundError:
        return "cluster.local"


def issue_node(d: Path, node: str) -> Path:
    d = Path(d)
    root = ca.load_certs((d / "root.pem").read_bytes())[0]
    root_key = ca.load_key((d / "root.key").read_bytes())
    cert, key = ca.make_intermediate(root, root_key, node, trust_domain_of(d), _now())
    out = d / "nodes" / node
    out.mkdir(parents=True, exist_ok=True)
    write_private(out / "key.pem", ca.key_pem(key))
    (out / "cert.pem").write_bytes(ca.cert_pem(cert))
    return out / "cert.pem"


def issue_node_credential(d: Path, node: str) -> Path:
    """The node's client certificate for ``hostmesh ca serve`` (mutual TLS), from the
    newest root; the node holds this instead of a signing key."""
    d = Path(d)
    root = ca.load_certs((d / "root.pem").read_bytes())[0]
    root_key = ca.load_key((d / "root.key").read_bytes())
    cert, key = ca.make_node_credential(root, root_key, node, _now())
    out = d / "nodes" / node / "credential"
    out.mkdir(parents=True, exist_ok=True)
    write_private(out / "key.pem", ca.key_pem(key))
    (out / "cert.pem").write_bytes(ca.cert_pem(cert))
    return out / "cert.pem"


def issue_leaf(d: Path, spiffe_id: str, out: Path, node: str | None = None, ttl_s: float | None = None) -> Path:
    """An SVID (cert chain + key) for an external issuer's directory or for tests."""
    d = Path(d)
    if node:
        issuer = ca.load_certs((d / "nodes" / node / "cert.pem").read_bytes())[0]
        issuer_key = ca.load_key((d / "nodes" / node / "key.pem").read_bytes())
    else:
        issuer = ca.load_certs((d / "root.pem").read_bytes())[0]
        issuer_key = ca.load_key((d / "root.key").read_bytes())
    ttl = dt.timedelta(seconds=ttl_s) if ttl_s else ca.SVID_TTL
    cert, key = ca.make_svid(spiffe_id, issuer, issuer_key, _now(), ttl)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chain = [cert] + ([issuer] if node else [])
    (out / "cert.pem").write_bytes(ca.cert_pem(*chain))
    write_private(out / "key.pem", ca.key_pem(key))
    return out / "cert.pem"
