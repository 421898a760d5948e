"""Awaitable send/receive on non-blocking stdlib sockets (plain; ``ssl.SSLSocket``'s
want-read/want-write map to the matching wait too).

Used by the Python parts that read bytes themselves — the HTTP inspector and the HTTP
request router, on the ends of socket pairs the native core bridges; every other byte
moves in the core. trio waits on the raw file descriptor.
"""

from __future__ import annotations

import socket
import ssl

import trio

# One read while setting up a connection: a CONNECT head or an HTTP request head fits.
RECV_BYTES = 64 * 1024


async def recv_some(sock: socket.socket, n: int = RECV_BYTES) -> bytes:
    """At least one byte, or b"" at EOF (a TLS close_notify or a ragged EOF count as EOF)."""
    while True:
        try:
            return sock.recv(n)
        except (BlockingIOError, ssl.SSLWantReadError):
            await trio.lowlevel.wait_readable(sock)
        except ssl.SSLWantWriteError:
            await trio.lowlevel.wait_writable(sock)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""


async def send_all(sock: socket.socket, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        try:
            n = sock.send(view)
            view = view[n:]
        except (BlockingIOError, ssl.SSLWantWriteError):
            await trio.lowlevel.wait_writable(sock)
        except ssl.SSLWantReadError:
            await trio.lowlevel.wait_readable(sock)


def shutdown_write(sock: socket.socket) -> None:
    """Half-close ``sock``'s sending side (TCP FIN; the core turns it into close_notify
    on a TLS leg)."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0): the client sees the refusal at once, not a hang."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    close(sock)


def close(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.close()
    except OSError:
        pass
