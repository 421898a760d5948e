"""`hostmesh ca init|issue|retire|inspect`: a local CA for bare-metal installs (docs/identity.md).

Exit codes (docs/cli.md): 0 ok, 1 a check failed (``inspect`` found a broken chain,
``retire`` would strand node intermediates), 2 usage error or a missing/invalid file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from agent.cli.main import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ca", help="a local certificate authority (root, node intermediates, SVIDs)")
    cs = p.add_subparsers(dest="ca_cmd", metavar="SUBCOMMAND", required=True)
    i = cs.add_parser("init", help="create a root CA and trust bundle in --dir")
    i.add_argument("--dir", required=True, type=Path)
    i.add_argument("--trust-domain", default="cluster.local")
    i.add_argument("--rotate", action="store_true", help="add a new root, keeping the old ones in the bundle")
    i.set_defaults(func=cmd_init)
    s = cs.add_parser("issue", help="issue a node intermediate (--node) or a workload SVID (--spiffe-id)")
    s.add_argument("--dir", required=True, type=Path)
    s.add_argument("--node")
    s.add_argument("--spiffe-id")
    s.add_argument("--out", type=Path, help="with --spiffe-id: directory for cert.pem and key.pem")
    s.add_argument("--ttl", type=float, help="with --spiffe-id: lifetime in seconds (default 24 h)")
    s.add_argument("--credential", action="store_true",
                   help="with --node: the node's client credential for `ca serve` (no signing key) "
                        "instead of a node intermediate")
    s.set_defaults(func=cmd_issue)
    r = cs.add_parser("retire", help="end a root rotation: keep only the current root in the bundle")
    r.add_argument("--dir", required=True, type=Path)
    r.add_argument("--force", action="store_true",
                   help="retire even when node intermediates in --dir were issued by a retired root")
    r.set_defaults(func=cmd_retire)
    n = cs.add_parser("inspect", help="show certificates: chain, identities, validity")
    n.add_argument("files", nargs="+", type=Path)
    n.add_argument("--bundle", type=Path, help="check that each chain reaches a root in this trust bundle")
    n.add_argument("--json", action="store_true")
    n.set_defaults(func=cmd_inspect)
    from agent.cli import ca_serve

    ca_serve.register(cs)


def cmd_init(args) -> int:
    from agent.identity import spiffe, store

    if not spiffe.is_trust_domain(args.trust_domain):
        raise CliError(f"--trust-domain {args.trust_domain!r} is not a valid SPIFFE trust domain")
    try:
        root = store.init_dir(args.dir, args.trust_domain, rotate=args.rotate)
    except FileExistsError as e:
        raise CliError(str(e)) from None
    print(f"root CA for {args.trust_domain}: {root} (bundle {args.dir / 'bundle.pem'})")
    return 0


def cmd_retire(args) -> int:
    from agent.identity import store

    if not (args.dir / "root.pem").exists() or not (args.dir / "bundle.pem").exists():
        raise CliError(f"{args.dir}: no root CA here (hostmesh ca init --dir {args.dir})")
    from agent.identity import ca

    current = ca.load_certs((args.dir / "root.pem").read_bytes())[0]
    stranded = sorted(p.parent.name for p in (args.dir / "nodes").glob("*/cert.pem")
                      if not ca.issued_by(ca.load_certs(p.read_bytes())[0], current))
    if stranded and not args.force:
        raise CliError(f"{args.dir}: node intermediates not issued by the current root: {', '.join(stranded)}; "
                       f"their SVIDs would not chain to the bundle once retired. Re-issue them first "
                       f"(hostmesh ca issue --dir {args.dir} --node NAME), or --force", 1)
    dropped = store.retire_old_roots(args.dir)
    print(f"{args.dir / 'bundle.pem'}: {dropped} old root(s) removed; distribute it and reload the agents")
    return 0


def cmd_issue(args) -> int:
    from agent.identity import spiffe, store

    if not (args.dir / "root.pem").exists():
        raise CliError(f"{args.dir}: no root CA here (hostmesh ca init --dir {args.dir})")
    if bool(args.node) == bool(args.spiffe_id) and not (args.node and args.spiffe_id):
        raise CliError("give --node NAME (node intermediate) or --spiffe-id ID (an SVID)")
    if args.credential and (not args.node or args.spiffe_id):
        raise CliError("--credential goes with --node NAME only (the node's client credential for `ca serve`)")
    if args.spiffe_id:
        try:
            sid = spiffe.parse(args.spiffe_id)
        except spiffe.SpiffeError as e:
            raise CliError(str(e)) from None
        if sid.trust_domain != store.trust_domain_of(args.dir):
            raise CliError(f"{args.spiffe_id}: trust domain is not {store.trust_domain_of(args.dir)}")
        if args.node and not (args.dir / "nodes" / args.node / "cert.pem").exists():
            raise CliError(f"no intermediate for node {args.node} (hostmesh ca issue --dir {args.dir} --node {args.node})")
        if args.out is None:
            raise CliError("ca issue --spiffe-id needs --out DIR (where cert.pem and key.pem go)")
        out = args.out
        print(store.issue_leaf(args.dir, args.spiffe_id, out, args.node, args.ttl))
        return 0
    if args.credential:
        print(store.issue_node_credential(args.dir, args.node))
        return 0
    print(store.issue_node(args.dir, args.node))
    return 0


def _chain_state(certs: list, depth: int, roots: list | None) -> str:
    """How certificate ``depth`` of a file chains: to the next one in the file, to itself
    (a root), or to a root of ``--bundle``."""
    from agent.identity import ca as _ca

    c = certs[depth]
    if depth + 1 < len(certs):
        return f"signed by #{depth + 1}" if _ca.issued_by(c, certs[depth + 1]) else f"NOT signed by #{depth + 1}"
    if roots is not None:
        return "reaches the bundle" if any(r == c or _ca.issued_by(c, r) for r in roots) else "NOT in the bundle"
    return "self-signed" if _ca.issued_by(c, c) else "issuer not in the file"


def _load_pem(f: Path) -> list:
    from agent.files import FileProblem, read_bytes
    from agent.identity import ca

    try:
        certs = ca.load_certs(read_bytes(f))
    except FileProblem as e:
        raise CliError(str(e)) from None
    except ValueError as e:
        raise CliError(f"{f}: not a PEM certificate file ({e})") from None
    if not certs:
        raise CliError(f"{f}: no certificate in it")
    return certs


def cmd_inspect(args) -> int:
    from cryptography import x509

    from agent.cli.table import render

    roots = _load_pem(args.bundle) if args.bundle else None
    rows = []
    now = dt.datetime.now(dt.UTC)
    for f in args.files:
        certs = _load_pem(f)
        for depth, c in enumerate(certs):
            try:
                uris = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                    x509.UniformResourceIdentifier)
            except x509.ExtensionNotFound:
                uris = []
            try:
                is_ca = c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            except x509.ExtensionNotFound:
                is_ca = False
            state = "expired" if now > c.not_valid_after_utc else "not yet valid" if now < c.not_valid_before_utc else "valid"
            rows.append({"file": str(f), "depth": depth, "subject": c.subject.rfc4514_string(),
                         "issuer": c.issuer.rfc4514_string(), "uris": uris, "ca": is_ca,
                         "serial": format(c.serial_number, "x"), "not_before": c.not_valid_before_utc.isoformat(),
                         "not_after": c.not_valid_after_utc.isoformat(), "state": state,
                         "chain": _chain_state(certs, depth, roots)})
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(render(["file", "#", "subject", "identity", "CA", "not after", "state", "chain"],
                     [[r["file"], r["depth"], r["subject"], ",".join(r["uris"]) or "-", "yes" if r["ca"] else "no",
                       r["not_after"][:19], r["state"], r["chain"]] for r in rows]))
    broken = any(r["chain"].startswith("NOT") or r["state"] != "valid" for r in rows)
    return 1 if broken else 0
