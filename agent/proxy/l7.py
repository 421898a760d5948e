"""Per-request authorization on HTTP ports, at the destination.

Requests are parsed with h11 (server role) as they arrive from the source; each request
head is evaluated with its method, path, host and headers. An allowed request goes to
the workload byte for byte — the exact bytes h11 consumed (``trailing_data`` tells how
many), bodies streamed as they come, never buffered whole. A denied request gets a 403
naming the policy and the connection closes. Responses are tracked with a second h11
connection (client role) only to know when an exchange ends, so keep-alive connections
are checked request by request. Upgrades and CONNECT switch to raw bytes once allowed.
"""

from __future__ import annotations

import logging
import socket
import time

import h11
import trio

from agent.proxy import aio, enforce
from agent.proxy.conns import Conn
from agent.rbac.evaluate import HttpAttrs

logger = logging.getLogger("hostmesh.l7")
# SPEC.md / h11: a request head beyond 16 KiB is refused (431).
MAX_HEAD = 16 * 1024


def _reply(conn: h11.Connection, status: int, body: bytes, extra=(), close: bool = True) -> bytes:
    hs = [("content-type", "text/plain"), ("content-length", str(len(body))), *extra]
    if close:
        hs.append(("connection", "close"))
    out = conn.send(h11.Response(status_code=status, headers=hs))
    return out + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())


async def relay_http(agent, conn: Conn, a: socket.socket, b: socket.socket, *, to_a: bytes = b"",
                     to_b: bytes = b"") -> tuple[int, int, str]:
    """Relay ``a`` (source) <-> ``b`` (workload) checking every request; returns
    (bytes to workload, bytes back, close reason)."""
    req_side = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    resp_side = h11.Connection(h11.CLIENT)
    counts = [0, 0]
    state = {"reason": "closed", "raw": False}
    cycle = trio.Event()
    conn.cancel_scope = trio.CancelScope()

    async def to_server() -> None:
        nonlocal cycle
        fed = forwarded = 0
        pending = bytearray(to_b)
        if pending:
            req_side.receive_data(bytes(pending))
            fed = len(pending)
        start = None
        discard = False
        while True:
            if state["raw"]:
                data = await aio.recv_some(a)
                if not data:
                    break
                await aio.send_all(b, data)
                counts[0] += len(data)
                continue
            try:
                ev = req_side.next_event()
            except h11.RemoteProtocolError as e:
                await aio.send_all(a, _reply(req_side, e.error_status_hint, f"bad request: {e}\n".encode()))
                state["reason"] = "bad_request"
                raise _Done() from None
            if ev is h11.NEED_DATA:
                data = await aio.recv_some(a)
                if not data:
                    req_side.receive_data(b"")
                    if req_side.their_state in (h11.IDLE, h11.DONE, h11.MUST_CLOSE, h11.CLOSED):
                        break
                    continue
                pending += data
                fed += len(data)
                req_side.receive_data(data)
                continue
            if ev is h11.PAUSED:
                await cycle.wait()
                continue
            consumed = fed - len(req_side.trailing_data[0])
            if isinstance(ev, h11.Request):
                start = time.time()
                hdrs: dict[str, list[str]] = {}
                for k, v in ev.headers:
                    hdrs.setdefault(k.decode().lower(), []).append(v.decode("latin-1"))
                attrs = HttpAttrs(ev.method.decode(), ev.target.decode("latin-1").split("?", 1)[0],
                                  (hdrs.get("host") or [""])[0], hdrs)
                d = enforce.decide(agent, conn, attrs)
                _record(agent, conn, attrs, d, start)
                if d.verdict == "deny":
                    # Like Envoy's RBAC filter: 403 naming the policy; the connection stays
                    # usable, the denied request's body is read and dropped, never forwarded.
                    body = f"RBAC: access denied by {d.policy or 'policy'}\n".encode()
                    extra = [("x-hostmesh-policy", d.policy)] if d.policy else []
                    await aio.send_all(a, _reply(req_side, 403, body, extra, close=False))
                    conn.verdict, conn.policy, conn.reason = "deny", d.policy, d.reason
                    discard = True
                else:
                    discard = False
                    resp_side.send(h11.Request(method=ev.method, target=ev.target, headers=ev.headers,
                                               http_version=ev.http_version))
            elif isinstance(ev, h11.Data):
                if not discard:
                    resp_side.send(h11.Data(data=ev.data))
            elif isinstance(ev, h11.EndOfMessage):
                if not discard:
                    resp_side.send(h11.EndOfMessage())
            elif isinstance(ev, h11.ConnectionClosed):
                break
            # forward exactly the bytes h11 consumed for this event
            chunk = bytes(pending[: consumed - forwarded])
            del pending[: consumed - forwarded]
            forwarded = consumed
            if discard:
                chunk = b""
                if isinstance(ev, h11.EndOfMessage):
                    discard = False
                    if req_side.our_state is h11.MUST_CLOSE or req_side.their_state is h11.MUST_CLOSE:
                        state["reason"] = "denied"
                        raise _Done()
                    req_side.start_next_cycle()
            if chunk:
                await aio.send_all(b, chunk)
                counts[0] += len(chunk)
            if req_side.their_state is h11.SWITCHED_PROTOCOL or (
                    isinstance(ev, h11.Request) and ev.method == b"CONNECT"):
                state["raw"] = True
                rest = bytes(pending)
                pending.clear()
                if rest:
                    await aio.send_all(b, rest)
                    counts[0] += len(rest)
        from agent.proxy.tlsclose import shutdown_write

        shutdown_write(b)

    async def to_client() -> None:
        nonlocal cycle
        if to_a:
            await aio.send_all(a, to_a)
        while True:
            data = await aio.recv_some(b)
            if not data:
                break
            await aio.send_all(a, data)
            counts[1] += len(data)
            if state["raw"]:
                continue
            try:
                resp_side.receive_data(data)
                while True:
                    ev = resp_side.next_event()
                    if ev in (h11.NEED_DATA, h11.PAUSED):
                        break
                    # mirror the response into the request side's state machine, so it
                    # knows the exchange is over and parses the next keep-alive request
                    if isinstance(ev, (h11.Response, h11.InformationalResponse)):
                        if ev.status_code == 101:
                            state["raw"] = True
                            break
                        req_side.send(type(ev)(status_code=ev.status_code, headers=ev.headers, reason=ev.reason))
                    elif isinstance(ev, h11.Data):
                        req_side.send(h11.Data(data=ev.data))
                    elif isinstance(ev, h11.EndOfMessage):
                        req_side.send(h11.EndOfMessage())
                        if resp_side.our_state is h11.DONE and req_side.their_state is h11.DONE:
                            resp_side.start_next_cycle()
                            req_side.start_next_cycle()
                            cycle.set()
                            cycle = trio.Event()
            except (h11.ProtocolError, RuntimeError):
                state["raw"] = True  # not something we can follow: stop tracking, keep relaying
        from agent.proxy.tlsclose import shutdown_write

        shutdown_write(a)

    try:
        with conn.cancel_scope:
            async with trio.open_nursery() as n:
                n.start_soon(to_server)
                n.start_soon(to_client)
    except* _Done:
        pass
    except* OSError:
        state["reason"] = "reset"
    if conn.cancel_scope.cancelled_caught:
        state["reason"] = conn.close_reason or "closed"
        aio.reset(a)
        aio.reset(b)
    else:
        aio.close(a)
        aio.close(b)
    return counts[0], counts[1], state["reason"]


class _Done(Exception):
    pass


def _record(agent, conn: Conn, attrs: HttpAttrs, d, start: float) -> None:
    agent.count(f"http_requests_{d.verdict}")
    tel = agent.telemetry
    if tel is None:
        return
    from agent.telemetry.record import Endpoint, RequestRecord

    def ep(ip, port, w, p):
        return Endpoint(ip, port, w.name if w else None, w.namespace if w else None, p)

    tel.submit(RequestRecord(start, time.time(), agent.config.node.name,
                             ep(conn.src_ip, conn.src_port, conn.src, conn.src_principal),
                             ep(conn.dst_ip, conn.dst_port, conn.dst, conn.dst_principal),
                             attrs.method, attrs.path, attrs.host, 403 if d.verdict == "deny" else 0,
                             d.verdict, d.policy, conn.trace_id))
