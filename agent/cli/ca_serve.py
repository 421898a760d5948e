"""`hostmesh ca serve --config FILE`: the CA service (agent/casvc, docs/identity.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.main import CliError


def register(cs: argparse._SubParsersAction) -> None:
    p = cs.add_parser("serve", help="the CA service: Istio's CreateCertificate with node authorization")
    p.add_argument("--config", required=True, type=Path)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from agent.casvc.server import serve
    from agent.config import ConfigError

    try:
        return serve(str(args.config))
    except ConfigError as e:
        raise CliError(str(e)) from None
