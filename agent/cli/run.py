"""`hostmesh run` (the agent, in the foreground) and `hostmesh check-config`."""

from __future__ import annotations

import argparse
import sys

from agent.cli.main import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the agent in the foreground (SIGTERM drains, SIGHUP reloads)")
    p.add_argument("--config", "-c", required=True, help="agent configuration (YAML)")
    # started by the supervisor of dataplane.workers > 1 (agent/workers.py), not by hand
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_run)
    c = sub.add_parser("check-config", help="validate a configuration and its policies")
    c.add_argument("file")
    c.set_defaults(func=cmd_check)


def _load(path: str):
    from agent.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as e:
        raise CliError(str(e), 1) from None


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _load(args.file)
    problems: list[str] = []
    if cfg.policies.dir:
        from agent.app import load_policy_dir

        try:
            load_policy_dir(cfg.policies.dir, cfg.policies.root_namespace)
        except ValueError as e:
            problems.append(str(e))
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    print(f"{args.file}: ok")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    from agent import log

    if args.log_level is None:
        log.set_level(cfg.log_level)
    _raise_fd_limit()
    import trio

    from agent.serve import run_agent

    return trio.run(run_agent, cfg, args.config, args.worker)


# Two sockets per relayed connection plus listeners: 10k idle connections need ~20k fds.
FD_LIMIT = 262144


def _raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (FD_LIMIT, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return
        except (ValueError, OSError):
            continue
