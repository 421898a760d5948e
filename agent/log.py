"""Logging set-up: human-readable lines by default, JSON lines with --log-format json."""

from __future__ import annotations

import json
import logging
import sys
import time

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _RESERVED and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class HumanFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


_FORMAT = ["text"]


def current_format() -> str:
    """The format ``setup`` chose (worker processes log the way their supervisor does)."""
    return _FORMAT[0]


def setup(level: str = "info", fmt: str = "text", stream=None) -> None:
    _FORMAT[0] = fmt
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


# Client libraries that log every retry of an unreachable broker or collector (an error
# line every few hundred milliseconds in an outage). The sinks warn once themselves and
# count every failure (/v1/stats, hostmesh_telemetry_export_failures_total); at debug
# level the libraries speak again.
_CHATTY = ("aiokafka", "opentelemetry.exporter", "opentelemetry.sdk")


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET if level.lower() == "debug" else logging.CRITICAL)
