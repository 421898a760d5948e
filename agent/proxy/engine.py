"""The batched socket layer: every established connection of a worker, served by one
thread blocked in an edge-triggered epoll.

Why: trio pays ~70 us and ~4 syscalls per forwarded message at a relay (NOTES.md); a
blocking ``epoll_wait`` releases the GIL and one wake-up serves every ready socket, with
non-blocking ``recv_into``/``send`` through one 256 KiB buffer. A direction holds its
own bytes only while its destination cannot take them (backpressure: the source is not
read again until they are gone), so an idle connection costs a few small objects.

Semantics per connection (``a`` = source side, ``b`` = destination side): bytes both
ways; EOF on one side becomes a half-close of the other after its bytes are flushed
(TLS legs send close_notify, see ``tlsclose``); a reset on one side resets the other;
idle connections are closed after ``idle_timeout_s``; ``close()`` from any thread ends
a connection with a reset. Each finished connection is reported to trio, in the trio
thread, as a ``FinishedConn``. The engine never decides anything about policy.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import logging
import os
import select
import socket
import ssl
import sys
import termios
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from agent.proxy.engine_conn import FinishedConn, LiveConn, _Leg, _Pair, _Reset
from agent.proxy.frames import END, HEADER, FrameError
from agent.proxy.tlsclose import shutdown_write

__all__ = ["Engine", "FinishedConn", "LiveConn", "open_engine"]

logger = logging.getLogger("hostmesh.engine")

EV_IN = select.EPOLLIN | select.EPOLLRDHUP
EV_OUT = select.EPOLLOUT
EV_ERR = select.EPOLLHUP | select.EPOLLERR
EPOLLIN = select.EPOLLIN
EV_HUP = select.EPOLLRDHUP | EV_ERR
# EPOLLOUT is armed only while a leg owes bytes: armed all the time, every ACK that
# frees send space is an extra wake-up (measured: +11 us ping-pong p50, docs/dataplane.md).
EV_READ = EV_IN | select.EPOLLET
EV_BOTH = EV_IN | EV_OUT | select.EPOLLET
# Events handled per epoll_wait; more wait for the next turn of the loop.
MAX_EVENTS = 1024
# Idle connections are looked for once per this many seconds (a coarse sweep is cheap;
# the timeout is an hour by default, so a second of slack is nothing).
SWEEP_S = 1.0
# The largest TLS record's payload: a read that returned less ended on a short record.
TLS_RECORD = 16384
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
_EOF = (ssl.SSLZeroReturnError, ssl.SSLEOFError)


class Engine:
    in_engine = True

    def __init__(self, buffer_bytes: int = 256 * 1024, idle_timeout_s: float = 3600.0) -> None:
        self._buf = bytearray(buffer_bytes)
        self._view = memoryview(self._buf)
        self.idle_timeout_s = idle_timeout_s
        self._ep = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._ep.register(self._wake, select.EPOLLIN)
        self._legs: dict[int, _Leg] = {}
        self._pairs: dict[int, _Pair] = {}
        self._cmds: collections.deque = collections.deque()
        self._finished: list[FinishedConn] = []
        self._stop = False
        self._now = time.monotonic()  # the engine thread's clock, read once per wake-up
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.on_finished: Callable[[FinishedConn], None] = lambda fc: None
        self.stats = {"added": 0, "finished": 0, "resets": 0, "idle_closed": 0, "wakeups": 0, "events": 0}

    # ---- called from the trio thread --------------------------------------------
    def start(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._thread = threading.Thread(target=self._loop, name="hostmesh-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._kick()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for p in list(self._pairs.values()):
            self._end(p, "shutdown", reset=True)
        self._ep.close()
        os.close(self._wake)

    def add(self, a: socket.socket, b: socket.socket, *, to_a: bytes = b"", to_b: bytes = b"",
            conn_id: int, tag: str = "", a_framing=None, b_framing=None) -> None:
        """``a_framing``/``b_framing``: the ``frames.Framing`` of a leg carrying a reusable stream."""
        a.setblocking(False)
        b.setblocking(False)
        self._cmds.append(("add", a, b, to_a, to_b, conn_id, tag, a_framing, b_framing))
        self._kick()

    def close(self, conn_id: int, reason: str) -> None:
        self._cmds.append(("close", conn_id, reason))
        self._kick()

    def snapshot(self) -> list[LiveConn]:
        now = time.monotonic()
        return [LiveConn(p.id, p.tag, p.a2b, p.b2a, now - p.start) for p in list(self._pairs.values())]

    def statistics(self) -> dict[str, Any]:
        return {"engine": "epoll", "connections": len(self._pairs), **self.stats}

    def _kick(self) -> None:
        try:
            os.eventfd_write(self._wake, 1)
        except OSError:
            pass

    # ---- the engine thread ----------------------------------------------------------
    def _loop(self) -> None:
        # the hot path: one epoll_wait, then recv_into/send per ready socket; names are
        # hoisted and the clock is read once per wake-up (ping-pong latency, docs)
        monotonic = time.monotonic
        last_sweep = self._now = monotonic()
        poll, service, stats, legs, wake = self._ep.poll, self._service, self.stats, self._legs, self._wake
        forward = self._forward
        while not self._stop:
            try:
                events = poll(SWEEP_S, MAX_EVENTS)
            except OSError:
                if self._stop:
                    break
                raise
            self._now = now = monotonic()
            stats["wakeups"] += 1
            stats["events"] += len(events)
            if self._cmds:
                self._run_cmds()
            for fd, ev in events:
                leg = legs.get(fd)
                if leg is None:
                    if fd == wake:
                        try:
                            os.eventfd_read(wake)
                        except OSError:
                            pass
                    continue
                try:  # contained: one connection's error ends that connection, never this thread
                    if ev == EPOLLIN:  # data only: it can move one way, the other is untouched
                        leg.readable = True
                        forward(leg)
                        continue
                    if ev & (EV_IN | EV_ERR):
                        leg.readable = True
                        if ev & EV_HUP:
                            leg.hup = True
                    if ev & (EV_OUT | EV_ERR):
                        leg.writable = True
                    service(leg.pair)
                except Exception as e:
                    self._failed(leg.pair, e)
            if now - last_sweep >= SWEEP_S:
                last_sweep = now
                self._sweep(now)
            if self._finished:
                batch, self._finished = self._finished, []
                try:
                    self._token.run_sync_soon(self._deliver, batch)
                except trio.RunFinishedError:
                    return

    def _deliver(self, batch: list[FinishedConn]) -> None:  # in the trio thread
        for fc in batch:
            try:
                self.on_finished(fc)
            except Exception:
                logger.exception("finished-connection callback failed")

    def _failed(self, p: _Pair, e: Exception) -> None:
        """An unexpected error while serving ``p``: logged once, ``p`` is reset and
        reported with reason ``error: <Class>`` (counted by the trio side)."""
        self.stats["errors"] = self.stats.get("errors", 0) + 1
        logger.error("connection failed in the socket layer", extra={"conn": p.id, "reason": type(e).__name__},
                     exc_info=e)
        if not p.done:
            try:
                self._end(p, f"error: {type(e).__name__}", reset=True)
            except Exception:  # pragma: no cover - ending must not fail twice
                logger.exception("ending a failed connection failed", extra={"conn": p.id})

    def _run_cmds(self) -> None:
        while self._cmds:
            cmd = self._cmds.popleft()
            try:
                self._run_cmd(cmd)
            except Exception as e:
                p = self._pairs.get(cmd[5] if cmd[0] == "add" else cmd[1])
                if p is not None:
                    self._failed(p, e)
                elif cmd[0] == "add":
                    logger.error("adding a connection failed", extra={"conn": cmd[5]}, exc_info=e)
                    for s in (cmd[1], cmd[2]):
                        try:
                            s.close()
                        except OSError:
                            pass
                    self._finished.append(FinishedConn(cmd[5], cmd[6], 0, 0, time.time(), time.time(),
                                                       f"error: {type(e).__name__}"))

    def _run_cmd(self, cmd: tuple) -> None:
        if cmd[0] == "add":
            _, a, b, to_a, to_b, conn_id, tag, fa, fb = cmd
            p = _Pair(conn_id, tag, self._now)
            p.a, p.b = _Leg(a, p, to_a, fa), _Leg(b, p, to_b, fb)
            self._pairs[conn_id] = p
            for leg in (p.a, p.b):
                self._legs[leg.fd] = leg
                self._ep.register(leg.fd, EV_READ)
            self.stats["added"] += 1
            self._service(p)
        else:
            p = self._pairs.get(cmd[1])
            if p is not None:
                self._end(p, cmd[2], reset=True)

    def _forward(self, src: _Leg) -> None:
        """Move what ``src`` has to its peer (the ping-pong fast path of ``_service``)."""
        p = src.pair
        if p.done:
            return
        try:
            if src is p.a:
                p.a2b += self._pump(src, p.b)
            else:
                p.b2a += self._pump(src, p.a)
        except _Reset as e:
            self.stats["resets"] += 1
            self._end(p, str(e) or "reset", reset=True)
            return
        p.active = self._now
        if src.eof:  # a stream's empty frame is plain data (no RDHUP): the end may be here
            self._end_if_done(p)

    def _service(self, p: _Pair) -> None:
        if p.done:
            return
        try:
            p.a2b += self._pump(p.a, p.b)
            p.b2a += self._pump(p.b, p.a)
        except _Reset as e:
            self.stats["resets"] += 1
            self._end(p, str(e) or "reset", reset=True)
            return
        p.active = self._now
        self._end_if_done(p)

    def _end_if_done(self, p: _Pair) -> None:
        a, b = p.a, p.b
        if a.eof and b.eof and a.shut and b.shut and a.pending is None and b.pending is None:
            self._end(p, "closed", reset=False)

    def _pump(self, src: _Leg, dst: _Leg) -> int:
        """Move what ``src`` has to ``dst``; returns the bytes read from ``src``."""
        moved = 0
        if dst.pending is not None:
            if not dst.writable or not self._flush(dst):
                return 0
        if src.framing is not None:
            return self._unframe(src, dst)
        # onto a stream leg: read behind room for the frame header, then send both at once
        off = HEADER if dst.framing is not None else 0
        view, size, read = self._view, len(self._buf) - off, self._read
        while src.readable and not src.eof:
            n, eof = read(src, off)
            if n <= 0:
                src.eof = n == 0
                break
            if n < size and not src.tls and not src.hup:
                # a short read emptied the TCP receive queue: edge-triggered epoll signals
                # the next arrival, so skip the recv that would only say EAGAIN
                src.readable = False
            if eof:
                src.eof = True
            moved += n
            if off:
                view[:HEADER] = n.to_bytes(HEADER, "big")
            if not self._send(dst, view[:off + n]):
                # backpressure: the rest is kept, src is not read until dst drains
                break
        if src.eof and dst.pending is None and not dst.shut:
            self._half_close(dst)
        return moved

    def _read(self, src: _Leg, off: int = 0) -> tuple[int, bool]:
        """One read into the buffer at ``off``: (bytes, EOF right after them); (0, True)
        at EOF, (-1, False) when there is nothing (``src`` is then not readable). A TLS
        leg gathers records (one SSL read yields one 16 KiB record) until the buffer is
        full or OpenSSL has nothing more, so the data goes on in one send."""
        try:
            n = src.sock.recv_into(self._view[off:] if off else self._buf)
        except _WOULD_BLOCK:
            src.readable = False
            return -1, False
        except _EOF:
            return 0, True
        except OSError as e:
            raise _Reset(_reason(e)) from None
        if n and src.tls:
            try:
                total, eof, drained = _fill_tls(src.sock, self._view, off + n, n)
            except OSError as e:
                raise _Reset(_reason(e)) from None
            if drained and not src.hup:
                # nothing left anywhere: edge-triggered epoll signals the next arrival
                # (after a FIN/RST the read goes on to see the EOF or the error)
                src.readable = False
            return total - off, eof
        return n, n == 0

    def _half_close(self, dst: _Leg) -> None:
        dst.shut = True
        if dst.framing is None:
            shutdown_write(dst.sock)
        else:  # a stream's direction ends with an empty frame; the connection stays
            dst.framing.out_done = True
            self._send(dst, END)

    @staticmethod
    def _send_some(dst: _Leg, data) -> int:
        try:
            return dst.sock.send(data)
        except _WOULD_BLOCK:
            return 0
        except OSError as e:
            raise _Reset(_reason(e)) from None

    def _send(self, dst: _Leg, data) -> bool:
        """Send all of ``data`` or keep the rest as ``pending`` (copied: ``data`` may be
        the shared buffer); False when blocked. After a would-block OpenSSL wants the
        same bytes again, which ``pending`` holds."""
        sent = self._send_some(dst, data)
        if sent < len(data):
            dst.pending = bytes(data[sent:])
            self._blocked(dst)
            return False
        return True

    def _unframe(self, src: _Leg, dst: _Leg) -> int:
        """A stream leg: decode frames in place and send their payload on; the empty
        frame is the stream's EOF. Returns the payload bytes passed on. The connection
        closing before the empty frame, or a bad frame, is a reset (a clean end always
        has its empty frame)."""
        fr, moved = src.framing, 0
        try:
            if fr.backlog:  # read with the CONNECT head, before the hand-over
                data, fr.backlog = fr.backlog, b""
                moved += self._send_parts(fr.decode(memoryview(data)), dst)
            while not fr.in_done and src.readable and dst.pending is None:
                n, eof = self._read(src)
                if n < 0:
                    break
                if n:
                    moved += self._send_parts(fr.decode(self._view[:n]), dst)
                if (eof or not n) and not fr.in_done:
                    raise _Reset("tunnel_closed")
        except FrameError as e:
            raise _Reset(f"tunnel_protocol: {e}") from None
        if fr.in_done:
            src.eof = True
            if dst.pending is None and not dst.shut:
                self._half_close(dst)
        return moved

    def _send_parts(self, slices: list, dst: _Leg) -> int:
        """Send payload slices in order; on backpressure the rest is kept as ``pending``."""
        moved = 0
        for k, part in enumerate(slices):
            moved += len(part)
            if dst.pending is not None:
                continue
            sent = self._send_some(dst, part)
            if sent < len(part):
                dst.pending = b"".join([part[sent:], *slices[k + 1:]])
                self._blocked(dst)
        return moved

    def _flush(self, leg: _Leg) -> bool:
        data = leg.pending
        try:
            sent = leg.sock.send(data)
        except _WOULD_BLOCK:
            # OpenSSL wants the same bytes again: ``pending`` is left as it was
            self._blocked(leg)
            return False
        except OSError as e:
            raise _Reset(_reason(e)) from None
        if sent < len(data):
            leg.pending = memoryview(data)[sent:]
            self._blocked(leg)
            return False
        leg.pending = None
        if leg.armed:
            leg.armed = False
            self._ep.modify(leg.fd, EV_READ)
        return True

    def _blocked(self, leg: _Leg) -> None:
        """``leg`` cannot take more now: wait for EPOLLOUT (modify re-checks readiness,
        so an edge that came meanwhile is not lost)."""
        leg.writable = False
        if not leg.armed:
            leg.armed = True
            self._ep.modify(leg.fd, EV_BOTH)

    def _sweep(self, now: float) -> None:
        limit = self.idle_timeout_s
        for p in list(self._pairs.values()):
            if now - p.active > limit:
                self.stats["idle_closed"] += 1
                self._end(p, "idle_timeout", reset=True)

    def _end(self, p: _Pair, reason: str, reset: bool) -> None:
        if p.done:
            return
        p.done = True
        self._pairs.pop(p.id, None)
        reuse = None
        for leg in (p.a, p.b):
            self._legs.pop(leg.fd, None)
            try:
                self._ep.unregister(leg.fd)
            except (OSError, ValueError):
                pass
            if not reset and leg.framing is not None and leg.framing.done:
                reuse = (leg.sock, leg.framing)  # both directions ended: ready for the next stream
                continue
            if reset:
                try:
                    leg.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                except OSError:
                    pass
            try:
                socket.socket.close(leg.sock) if not isinstance(leg.sock, ssl.SSLSocket) else leg.sock.close()
            except OSError:
                pass
        self.stats["finished"] += 1
        wall = time.time()
        self._finished.append(FinishedConn(p.id, p.tag, p.a2b, p.b2a, wall - (time.monotonic() - p.start), wall, reason,
                                           reuse))


def _fill_tls(sock: ssl.SSLSocket, view: memoryview, n: int, last: int) -> tuple[int, bool, bool]:
    """Read more TLS records after the first (``last`` bytes) into ``view[n:]``: (bytes
    in view, eof, drained). After a short record it asks whether anything is left —
    decrypted bytes in OpenSSL (``pending``) or bytes in the kernel's receive queue
    (FIONREAD) — because a read that finds nothing costs an ``SSLWantReadError``
    (~3.4 us against ~0.6 us for the two questions; measured), twice per message on a
    ping-pong. After a full record more usually follows (bulk), so it just reads.
    OpenSSL reads one record at a time (no read-ahead), so nothing undecrypted hides in
    it. ``drained``: both said nothing is left."""
    size = len(view)
    while n < size:
        if last < TLS_RECORD and not sock.pending() and not _queued(sock.fileno()):
            return n, False, True
        try:
            last = sock.recv_into(view[n:])
        except _WOULD_BLOCK:
            return n, False, False
        except _EOF:
            return n, True, False
        if last == 0:
            return n, True, False
        n += last
    return n, False, False


def _queued(fd: int) -> int:
    """Bytes in the socket's receive queue."""
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder, signed=True)


def _reason(e: OSError) -> str:
    if isinstance(e, ssl.SSLError):
        return f"tls_error: {e.reason or e}"
    if e.errno == errno.ECONNRESET:
        return "reset"
    if e.errno == errno.EPIPE:
        return "broken_pipe"
    return f"error: {errno.errorcode.get(e.errno, e.errno)}" if e.errno else f"error: {e}"


@asynccontextmanager
async def open_engine(config: Any) -> AsyncIterator[Engine]:
    """The socket layer for the lifetime of the block (``dataplane`` config section)."""
    eng = Engine(config.buffer_bytes, config.idle_timeout_s)
    eng.start(trio.lowlevel.current_trio_token())
    try:
        yield eng
    finally:
        eng.stop()
