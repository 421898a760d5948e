"""A small HTTP/1.1 server on h11 for trio streams: the admin socket, readiness and
/metrics. Keep-alive, bounded header block (16 KiB, h11's) and body, timeouts so a
stalled client cannot pin a task, 400 on malformed requests, 413 on large bodies."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import h11
import trio

logger = logging.getLogger("hostmesh.http")

MAX_HEADER_BYTES = 16 * 1024
# A request must arrive (head and body) within this; an idle keep-alive connection closes.
REQUEST_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 60.0
READ_BYTES = 64 * 1024


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    peer: object = None  # for unix sockets: (pid, uid, gid)


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


Handler = Callable[[Request], Awaitable[Response]]


class _TooLarge(Exception):
    pass


async def serve_stream(stream: trio.abc.Stream, handler: Handler, *, max_body: int = 8 << 20, peer=None) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)

    async def send(ev) -> None:
        data = conn.send(ev)
        if data:
            await stream.send_all(data)

    async def reply(status: int, body: bytes, ctype: str = "text/plain", extra=()) -> None:
        hs = [("content-type", ctype), ("content-length", str(len(body))), *extra]
        await send(h11.Response(status_code=status, headers=hs))
        await send(h11.Data(data=body))
        await send(h11.EndOfMessage())

    while True:
        try:
            with trio.fail_after(IDLE_TIMEOUT_S if conn.their_state is h11.IDLE else REQUEST_TIMEOUT_S):
                req, body = await _read_request(stream, conn, max_body)
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            return
        except h11.RemoteProtocolError as e:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                try:
                    await reply(e.error_status_hint, f"bad request: {e}\n".encode())
                except Exception:  # noqa: BLE001 - the peer is gone
                    pass
            return
        except _TooLarge:
            try:
                await reply(413, b'{"error":{"code":"too_large","message":"request body too large"}}',
                            "application/json", [("connection", "close")])
            except Exception:  # noqa: BLE001
                pass
            return
        if req is None:
            return
        url = urlsplit(req.target.decode("latin-1"))
        r = Request(req.method.decode(), url.path, parse_qs(url.query),
                    {k.decode().lower(): v.decode("latin-1") for k, v in req.headers}, body, peer)
        try:
            resp = await handler(r)
        except Exception:
            logger.exception("handler failed for %s %s", r.method, r.path)
            resp = Response(500, [("content-type", "application/json")],
                            b'{"error":{"code":"internal","message":"internal error"}}')
        hs = [(k, v) for k, v in resp.headers if k.lower() != "content-length"]
        hs.append(("content-length", str(len(resp.body))))
        try:
            await send(h11.Response(status_code=resp.status, headers=hs))
            if resp.body:
                await send(h11.Data(data=resp.body))
            await send(h11.EndOfMessage())
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            return
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            return
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            return


async def _read_request(stream, conn: h11.Connection, max_body: int):
    req, chunks, size = None, [], 0
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            data = await stream.receive_some(READ_BYTES)
            conn.receive_data(data)
            continue
        if isinstance(ev, h11.Request):
            req = ev
            cl = dict(ev.headers).get(b"content-length")
            if cl is not None and cl.isdigit() and int(cl) > max_body:
                raise _TooLarge()
        elif isinstance(ev, h11.Data):
            size += len(ev.data)
            if size > max_body:
                raise _TooLarge()
            chunks.append(ev.data)
        elif isinstance(ev, h11.EndOfMessage):
            return req, b"".join(chunks)
        elif isinstance(ev, h11.ConnectionClosed):
            return None, b""


async def serve_tcp(host: str, port: int, handler: Handler, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    from agent import AGENT_MARK

    sock = trio.socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, AGENT_MARK)
    except OSError:
        pass
    await sock.bind((host, port))
    sock.listen(128)
    listener = trio.SocketListener(sock)

    async def conn(stream):
        async with stream:
            await serve_stream(stream, handler)

    async with trio.open_nursery() as n:
        task_status.started()
        await trio.serve_listeners(conn, [listener], handler_nursery=n)


def peer_credentials(sock) -> tuple[int, int, int]:
    import struct

    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)


async def serve_unix(path: str, handler: Handler, *, mode: int = 0o600, gid: int | None = None,
                     authorize: Callable[[tuple[int, int, int]], bool] = lambda c: True,
                     max_body: int = 8 << 20, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The admin socket: created with ``mode`` (and group), stale file replaced, every
    caller checked with SO_PEERCRED before a byte is read."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        if os.path.exists(path):
            os.unlink(path)  # a stale socket from a previous run
    except OSError:
        pass
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177 if mode == 0o600 else 0o117)
    try:
        await sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, mode)
    if gid is not None:
        os.chown(path, -1, gid)
    ours = os.stat(path).st_ino
    sock.listen(128)
    listener = trio.SocketListener(sock)

    async def conn(stream):
        async with stream:
            creds = peer_credentials(stream.socket)
            if not authorize(creds):
                body = b'{"error":{"code":"forbidden","message":"caller is not allowed to use the admin API"}}'
                await serve_stream(stream, _forbid(body), max_body=1 << 16, peer=creds)
                return
            await serve_stream(stream, handler, max_body=max_body, peer=creds)

    try:
        async with trio.open_nursery() as n:
            task_status.started()
            await trio.serve_listeners(conn, [listener], handler_nursery=n)
    finally:
        try:  # a replacement agent may have taken the path over while we drained
            if os.stat(path).st_ino == ours:
                os.unlink(path)
        except OSError:
            pass


def _forbid(body: bytes) -> Handler:
    async def h(_req: Request) -> Response:
        return Response(403, [("content-type", "application/json")], body)

    return h
