"""The records of the socket layer: a finished connection as reported to trio, a live
one as listed by ``snapshot()``, and the engine thread's per-connection state (two legs
and a pair). Plain data: no I/O, no clock, no threads here."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass


@dataclass(slots=True)
class FinishedConn:
    conn_id: int
    tag: str
    bytes_a_to_b: int
    bytes_b_to_a: int
    start: float
    end: float
    close_reason: str
    # a framed leg whose stream ended cleanly: (socket, Framing), open and ready for the
    # next stream (Framing.carry: bytes of the next request) — the receiver owns it now
    reuse: tuple | None = None


@dataclass(slots=True)
class LiveConn:
    conn_id: int
    tag: str
    bytes_a_to_b: int
    bytes_b_to_a: int
    age_s: float


class _Reset(Exception):
    pass


class _Leg:
    __slots__ = ("sock", "fd", "tls", "readable", "hup", "writable", "armed", "eof", "shut", "pending", "pair", "framing")

    def __init__(self, sock: socket.socket, pair: _Pair, pending: bytes, framing=None) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.tls = isinstance(sock, ssl.SSLSocket)
        self.readable = True  # OpenSSL may already hold decrypted bytes: read once
        self.hup = False  # the peer's FIN/RST was signalled: read until EOF, not a short read
        self.writable = True
        self.armed = False  # EPOLLOUT registered (only while bytes are owed)
        self.eof = False  # nothing more will come from this socket
        self.shut = False  # we half-closed this socket's sending side
        self.pending: bytes | memoryview | None = pending or None  # owed to this socket
        self.pair = pair
        # a frames.Framing when the leg carries a reusable stream (length-prefixed frames
        # both ways): bytes are framed on the way in and unframed on the way out
        self.framing = framing


class _Pair:
    __slots__ = ("id", "tag", "a", "b", "a2b", "b2a", "start", "active", "done")

    def __init__(self, conn_id: int, tag: str, now: float) -> None:
        self.id, self.tag = conn_id, tag
        self.a2b = self.b2a = 0
        self.start = self.active = now
        self.done = False
