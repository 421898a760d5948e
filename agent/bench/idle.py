"""Idle-connection helper for the benchmark: ``serve`` accepts and holds connections,
``hold`` opens N connections to it and keeps them open without traffic."""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import socket
import time


def _nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (262144, 262144))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(port: int) -> None:
    _nofile()
    ls = socket.create_server(("0.0.0.0", port), backlog=4096, reuse_port=True)
    ls.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(ls, selectors.EVENT_READ)
    held = []
    while True:
        for key, _ in sel.select():
            if key.fileobj is ls:
                try:
                    while True:
                        c, _ = ls.accept()
                        held.append(c)
                except BlockingIOError:
                    pass


def hold(host: str, port: int, count: int, seconds: float, report: str | None = None) -> None:
    """Open ``count`` connections one after another, write how many opened to ``report``
    (written to a temporary name and renamed, so a reader sees the whole count), hold."""
    _nofile()
    socks = []
    for _ in range(count):
        try:
            socks.append(socket.create_connection((host, port), timeout=10))
        except OSError:
            time.sleep(0.01)
    if report:
        with open(report + ".tmp", "w") as f:
            f.write(f"{len(socks)}\n")
        os.replace(report + ".tmp", report)
    time.sleep(seconds)


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    h = sub.add_parser("hold")
    h.add_argument("--host", required=True)
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--count", type=int, required=True)
    h.add_argument("--hold", type=float, default=600)
    h.add_argument("--report", help="write the number of connections opened here")
    a = p.parse_args()
    if a.cmd == "serve":
        serve(a.port)
    else:
        hold(a.host, a.port, a.count, a.hold, a.report)


if __name__ == "__main__":
    main()
