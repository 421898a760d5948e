"""`hostmesh run` (the agent, in the foreground) and `hostmesh check-config`."""

from __future__ import annotations

import argparse
import errno
import sys

from agent.cli.main import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the agent in the foreground (SIGTERM drains, SIGHUP reloads)")
    p.add_argument("--config", "-c", required=True, help="agent configuration (YAML)")
    p.set_defaults(func=cmd_run)
    c = sub.add_parser("check-config", help="check everything `hostmesh run` needs: the file, the files it names "
                                            "(CA key and chain, bundle, policies), addresses and ports")
    c.add_argument("file")
    c.set_defaults(func=cmd_check)


def _load(path: str):
    """(config, its text); a configuration error is exit 2 with every ``path:line: message``."""
    from agent.config import ConfigError, load_config

    try:
        cfg = load_config(path)
    except ConfigError as e:
        raise CliError(str(e), 2) from None
    try:
        text = open(path).read()
    except OSError:
        text = None
    return cfg, text


def cmd_check(args: argparse.Namespace) -> int:
    from agent import preflight

    cfg, text = _load(args.file)
    problems = preflight.check(cfg, args.file, text)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return preflight.exit_code(problems)
    dp = cfg.dataplane  # the effective choice, as an unset tunnel_protocol resolves
    print(f"{args.file}: ok (engine {dp.engine}, tunnel {dp.tunnel_protocol})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from agent import preflight

    cfg, text = _load(args.config)
    problems = preflight.check(cfg, args.config, text)
    for p in problems:
        print(f"hostmesh: {p}", file=sys.stderr)
    if any(p.kind == "policy" for p in problems):
        print("hostmesh: starting with the valid policy files; not ready until the rejected ones are fixed",
              file=sys.stderr)
    problems = [p for p in problems if p.kind != "policy"]
    if problems:
        print(f"hostmesh: not started; nothing was changed ({_capture_note(cfg, installed=False)})",
              file=sys.stderr)
        return preflight.exit_code(problems)
    from agent import log

    if args.log_level is None:
        log.set_level(cfg.log_level)
    _raise_fd_limit()
    import trio

    from agent.serve import run_agent

    try:
        return trio.run(run_agent, cfg, args.config)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - one line for the operator, never a traceback
        print(f"hostmesh: {failure_line(e, cfg)}", file=sys.stderr)
        return 1


def first_error(e: BaseException) -> BaseException:
    """The first leaf of an ExceptionGroup (trio's nurseries wrap what a task raised)."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


# What a start-up OSError usually means, and where to look (the checks of `check-config`
# have passed by then, so these are the cases they cannot see).
_HINTS = {
    errno.EADDRINUSE: "a port of ports.* is bound by another program: ss -tanp",
    errno.EADDRNOTAVAIL: "an address of node.* or ports.*_bind is not on this host",
    errno.EACCES: "run as root, or with CAP_NET_ADMIN and CAP_NET_RAW",
    errno.EPERM: "run as root, or with CAP_NET_ADMIN and CAP_NET_RAW",
}


def failure_line(e: BaseException, cfg) -> str:
    leaf = first_error(e)
    what = getattr(leaf, "strerror", None) and getattr(leaf, "filename", None)
    detail = f"{leaf.filename}: {leaf.strerror}" if what else (str(leaf) or type(leaf).__name__)
    hint = _HINTS.get(getattr(leaf, "errno", None)) if isinstance(leaf, OSError) else None
    return (f"the agent stopped: {type(leaf).__name__}: {detail}" + (f" ({hint})" if hint else "")
            + f"; {_capture_note(cfg, installed=True)}")


def _capture_note(cfg, installed: bool) -> str:
    """What pods see now; docs/operations.md "Start-up failures" says why the rules stay."""
    if not cfg.capture.enabled:
        return "capture is disabled"
    if not installed:
        return "capture rules from an earlier agent, if any, stay as they are"
    if cfg.capture.fail == "closed":
        return ("capture rules stay installed (capture.fail: closed): pods' new connections are refused until an "
                "agent runs; hostmesh capture remove takes them out")
    return "capture rules stay installed (capture.fail: open): pods' connections flow directly, unenforced"


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
