"""The plain trio relay: one task per direction, trio waits on each socket.

The portable fallback (``dataplane.engine: trio``) and the benchmark's reference for the
batched socket layer. Same semantics as ``engine``: half-close after the bytes are
flushed (close_notify on TLS legs), resets propagated, idle timeout, byte counts.
"""

from __future__ import annotations

import socket
import ssl
import time

import trio

from agent.proxy.engine import FinishedConn
from agent.proxy.sockets import set_reset_on_close
from agent.proxy.tlsclose import shutdown_write

_WOULD_BLOCK = (BlockingIOError, InterruptedError)


class _Idle:
    def __init__(self) -> None:
        self.last = trio.current_time()


async def _recv_into(sock: socket.socket, view: memoryview) -> int:
    while True:
        try:
            return sock.recv_into(view)
        except (*_WOULD_BLOCK, ssl.SSLWantReadError):
            await trio.lowlevel.wait_readable(sock)
        except ssl.SSLWantWriteError:
            await trio.lowlevel.wait_writable(sock)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return 0


async def _send_all(sock: socket.socket, data: memoryview) -> None:
    while data:
        try:
            n = sock.send(data)
            data = data[n:]
        except (*_WOULD_BLOCK, ssl.SSLWantWriteError):
            await trio.lowlevel.wait_writable(sock)
        except ssl.SSLWantReadError:
            await trio.lowlevel.wait_readable(sock)


async def _copy(src: socket.socket, dst: socket.socket, first: bytes, bufsize: int, idle: _Idle, counts: list, i: int) -> None:
    if first:
        await _send_all(dst, memoryview(first))
    buf = bytearray(bufsize)
    view = memoryview(buf)
    while True:
        n = await _recv_into(src, view)
        if n == 0:
            break
        counts[i] += n
        idle.last = trio.current_time()
        await _send_all(dst, view[:n])
    shutdown_write(dst)


async def relay(a: socket.socket, b: socket.socket, *, to_a: bytes = b"", to_b: bytes = b"", conn_id: int = 0,
                tag: str = "", buffer_bytes: int = 256 * 1024, idle_timeout_s: float = 3600.0) -> FinishedConn:
    a.setblocking(False)
    b.setblocking(False)
    counts = [0, 0]
    idle = _Idle()
    start = time.time()
    reason = "closed"
    try:
        async with trio.open_nursery() as outer:
            outer.start_soon(_watch_idle, idle, idle_timeout_s, outer.cancel_scope)
            async with trio.open_nursery() as copies:
                copies.start_soon(_copy, a, b, to_b, buffer_bytes, idle, counts, 0)
                copies.start_soon(_copy, b, a, to_a, buffer_bytes, idle, counts, 1)
            outer.cancel_scope.cancel()
    except* OSError:
        reason = "reset"
    if idle.last is None:
        reason = "idle_timeout"
    if reason != "closed":  # as the engine: the peers see a reset, not a clean end
        for s in (a, b):
            set_reset_on_close(s)
    for s in (a, b):
        try:
            s.close()
        except OSError:
            pass
    return FinishedConn(conn_id, tag, counts[0], counts[1], start, time.time(), reason)


async def _watch_idle(idle: _Idle, timeout: float, scope: trio.CancelScope) -> None:
    while True:
        await trio.sleep(max(0.5, timeout / 4))
        if trio.current_time() - idle.last > timeout:
            idle.last = None
            scope.cancel()
            return

