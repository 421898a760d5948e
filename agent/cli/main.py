"""`hostmesh` command line: one sub-module per command family, imported on demand.

Each module in COMMANDS exposes ``register(subparsers)`` that adds its parser(s) and
sets ``func`` (taking the parsed args, returning an exit code). Importing lazily keeps
`hostmesh ctl status` fast: it never imports trio's data path or OpenTelemetry.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from agent import __version__

# command name -> module that registers it
COMMANDS = {
    "run": "agent.cli.run",
    "check-config": "agent.cli.run",
    "capture": "agent.cli.capture",
    "ca": "agent.cli.ca",
    "ctl": "agent.cli.ctl",
    "doctor": "agent.cli.doctor",
    "lab": "agent.cli.lab",
    "demo": "agent.cli.demo",
    "bench": "agent.cli.bench",
}


class CliError(Exception):
    """A user-facing error: printed as ``hostmesh: <message>``. Exit codes, for every
    command (docs/cli.md): 0 ok, 1 a check failed or the operation did not succeed,
    2 usage or configuration error (the default here: nothing was done)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hostmesh", description="per-host mesh agent")
    p.add_argument("--version", action="version", version=f"hostmesh {__version__}")
    p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    done = set()
    for name, mod in COMMANDS.items():
        if mod in done or (only is not None and name != only):
            continue
        done.add(mod)
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            continue
        module.register(sub)
    return p


# global options that take a value: their value is not the command
_VALUED = ("--log-level", "--log-format")


def command_of(argv: list[str]) -> str | None:
    """The command word of ``argv`` (None before one), past the global options and their
    values: ``--log-format json run`` is ``run``, so the agent imports only its own
    command's module (the others cost it ~0.5 MiB it never uses)."""
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in _VALUED:
            skip = True
        elif not a.startswith("-"):
            return a
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = command_of(argv)
    parser = build_parser(first if first in COMMANDS else None)
    try:
        import argcomplete  # optional: shell completion when installed

        argcomplete.autocomplete(build_parser() if first is None else parser)
    except ImportError:
        pass
    args = parser.parse_args(argv)
    from agent import log

    log.setup(args.log_level or "info", args.log_format)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CliError as e:
        print(f"hostmesh: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `hostmesh ctl stats | head`: the reader left; no traceback
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
