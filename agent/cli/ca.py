"""`hostmesh ca init|issue|retire|inspect`: a local CA for bare-metal installs (docs/identity.md)."""

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
    r.set_defaults(func=cmd_retire)
    n = cs.add_parser("inspect", help="show certificates: chain, identities, validity")
    n.add_argument("files", nargs="+", type=Path)
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
        out = args.out or Path(".")
        print(store.issue_leaf(args.dir, args.spiffe_id, out, args.node, args.ttl))
        return 0
    if args.credential:
        print(store.issue_node_credential(args.dir, args.node))
        return 0
    print(store.issue_node(args.dir, args.node))
    return 0


def cmd_inspect(args) -> int:
    from cryptography import x509

    from agent.cli.table import render
    from agent.identity import ca

    rows = []
    now = dt.datetime.now(dt.UTC)
    for f in args.files:
        try:
            certs = ca.load_certs(f.read_bytes())
        except (OSError, ValueError) as e:
            raise CliError(f"{f}: not a PEM certificate file ({e})") from None
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
                         "not_after": c.not_valid_after_utc.isoformat(), "state": state})
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(render(["file", "#", "subject", "identity", "CA", "not after", "state"],
                     [[r["file"], r["depth"], r["subject"][:48], ",".join(r["uris"]) or "-", "yes" if r["ca"] else "no",
                       r["not_after"][:19], r["state"]] for r in rows]))
    return 0
