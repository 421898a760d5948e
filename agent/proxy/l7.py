"""Per-request authorization on HTTP ports, at the destination.

Requests are parsed with h11 (server role) as they arrive from the source; each request
head is evaluated with its method, path, host and headers. An allowed request goes to
the workload byte for byte — the exact bytes h11 consumed (``trailing_data`` tells how
many), bodies streamed as they come, never buffered whole. A denied request gets a 403
naming the policy and the connection closes. Responses are tracked with a second h11
connection (client role) only to know when an exchange ends, so keep-alive connections
are checked request by request. Upgrades and CONNECT switch to raw bytes once allowed.

The same relay observes HTTP ports for request metrics (``police=False``: nothing is
decided, at the source or where no L7 rule applies): each exchange becomes one
``RequestRecord`` per reporting side when its response ends, with the real status, the
bytes each way and the time to the end of the response.
"""

from __future__ import annotations

import logging
import socket
import time

import h11
import trio

from agent.proxy import aio, enforce
from agent.proxy.conns import Conn
from agent.rbac.evaluate import Decision, HttpAttrs

logger = logging.getLogger("hostmesh.l7")
# SPEC.md / h11: a request head beyond 16 KiB is refused (431).
MAX_HEAD = 16 * 1024


def _reply(conn: h11.Connection, status: int, body: bytes, extra=(), close: bool = True) -> bytes:
    hs = [("content-type", "text/plain"), ("content-length", str(len(body))), *extra]
    if close:
        hs.append(("connection", "close"))
    out = conn.send(h11.Response(status_code=status, headers=hs))
    return out + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())


_ALLOW = Decision("allow")


async def relay_http(agent, conn: Conn, a: socket.socket, b: socket.socket, *, to_a: bytes = b"",
                     to_b: bytes = b"", police: bool = True, reporters=("inbound",)) -> tuple[int, int, str]:
    """Relay ``a`` (source) <-> ``b`` (workload), checking every request when ``police``
    and recording each exchange for ``reporters`` ("outbound": the source's view,
    "inbound": the destination's); returns (bytes to workload, bytes back, close reason)."""
    req_side = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    resp_side = h11.Connection(h11.CLIENT)
    counts = [0, 0]
    conn.live = counts  # telemetry reads the bytes of a live connection here
    state = {"reason": "closed", "raw": False, "consumed": 0, "first_end": None}
    ex = _Exchange(agent, conn, reporters)
    cycle = trio.Event()
    conn.cancel_scope = trio.CancelScope()

    async def to_server() -> None:
        nonlocal cycle
        fed = forwarded = 0
        pending = bytearray(to_b)
        if pending:
            req_side.receive_data(bytes(pending))
            fed = len(pending)
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
                reply = _reply(req_side, e.error_status_hint, f"bad request: {e}\n".encode())
                await aio.send_all(a, reply)
                ex.bad_request(e.error_status_hint, fed, len(reply))
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
            consumed = state["consumed"] = fed - len(req_side.trailing_data[0])
            if isinstance(ev, h11.Request):
                hdrs: dict[str, list[str]] = {}
                for k, v in ev.headers:
                    hdrs.setdefault(k.decode().lower(), []).append(v.decode("latin-1"))
                attrs = HttpAttrs(ev.method.decode(), ev.target.decode("latin-1").split("?", 1)[0],
                                  (hdrs.get("host") or [""])[0], hdrs)
                d = enforce.decide(agent, conn, attrs) if police else _ALLOW
                if police:
                    agent.count(f"http_requests_{d.verdict}")
                ex.begin(attrs, d, counts[1])
                if d.verdict == "deny":
                    # Like Envoy's RBAC filter: 403 naming the policy; the connection stays
                    # usable, the denied request's body is read and dropped, never forwarded.
                    body = f"RBAC: access denied by {d.policy or 'policy'}\n".encode()
                    extra = [("x-hostmesh-policy", d.policy)] if d.policy else []
                    reply = _reply(req_side, 403, body, extra, close=False)
                    await aio.send_all(a, reply)
                    ex.denied_reply = len(reply)
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
                ex.request_done(consumed)
                if not discard:
                    resp_side.send(h11.EndOfMessage())
                else:
                    ex.end(403, ex.denied_reply)  # Envoy's RBAC: response_code 403, flags "-"
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
        state["first_end"] = state["first_end"] or "client"
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
                            ex.end(101, counts[1] - ex.resp_mark, state["consumed"])
                            state["raw"] = True
                            break
                        if isinstance(ev, h11.Response):
                            ex.status = ev.status_code
                        req_side.send(type(ev)(status_code=ev.status_code, headers=ev.headers, reason=ev.reason))
                    elif isinstance(ev, h11.Data):
                        req_side.send(h11.Data(data=ev.data))
                    elif isinstance(ev, h11.EndOfMessage):
                        req_side.send(h11.EndOfMessage())
                        ex.end(ex.status or 0, counts[1] - ex.resp_mark, state["consumed"])
                        if resp_side.our_state is h11.DONE and req_side.their_state is h11.DONE:
                            resp_side.start_next_cycle()
                            req_side.start_next_cycle()
                            cycle.set()
                            cycle = trio.Event()
            except (h11.ProtocolError, RuntimeError):
                state["raw"] = True  # not something we can follow: stop tracking, keep relaying
        state["first_end"] = state["first_end"] or "upstream"
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
    # an exchange cut short: Envoy's UC (upstream ended it) or DC (the client did)
    ex.end(ex.status or 0, counts[1] - ex.resp_mark, state["consumed"],
           "UC" if state["first_end"] == "upstream" else "DC")
    conn.live = None
    return counts[0], counts[1], state["reason"]


class _Done(Exception):
    pass


class _Exchange:
    """The request in flight on one connection (h11 keeps one at a time) and its record."""

    __slots__ = ("agent", "conn", "reporters", "attrs", "d", "start", "status", "resp_mark", "req_mark",
                 "req_bytes", "denied_reply", "peers")

    def __init__(self, agent, conn: Conn, reporters) -> None:
        self.agent, self.conn, self.reporters = agent, conn, reporters
        self.peers = None
        self.attrs = self.d = None
        self.start = 0.0
        self.status: int | None = None
        self.resp_mark = self.req_mark = self.req_bytes = self.denied_reply = 0

    def begin(self, attrs: HttpAttrs, d, resp_mark: int) -> None:
        self.attrs, self.d, self.start, self.status, self.resp_mark = attrs, d, time.time(), None, resp_mark
        self.req_bytes = -1

    def request_done(self, consumed: int) -> None:
        self.req_bytes, self.req_mark = consumed - self.req_mark, consumed

    def bad_request(self, status: int, fed: int, reply: int) -> None:
        if self.attrs is None:
            self.begin(HttpAttrs("-", "-", "", {}), _ALLOW, 0)
        self.end(status, reply, fed, "DPE")

    def end(self, status: int, resp_bytes: int, consumed: int | None = None, flags: str = "-") -> None:
        if self.attrs is None:
            return
        if self.req_bytes < 0:  # the response ended (or the connection did) before the request
            self.req_bytes = (consumed if consumed is not None else self.req_mark) - self.req_mark
        self._record(status, resp_bytes, flags)
        self.attrs = None

    def _record(self, status: int, resp_bytes: int, flags: str) -> None:
        agent, conn, attrs, d = self.agent, self.conn, self.attrs, self.d
        tel = agent.telemetry
        if tel is None or not self.reporters:
            return
        from agent.telemetry.record import RequestRecord

        if self.peers is None:  # the connection's ends and services, the same for each request
            from agent.proxy.finish import endpoint, service_of

            self.peers = (endpoint(conn.src_ip, conn.src_port, conn.src, conn.src_principal),
                          endpoint(conn.dst_ip, conn.dst_port, conn.dst, conn.dst_principal),
                          {r: service_of(agent, conn, r) for r in self.reporters})
        src, dst, services = self.peers
        end = time.time()
        for direction in self.reporters:
            tel.submit(RequestRecord(self.start, end, agent.config.node.name, src, dst, attrs.method, attrs.path,
                                     attrs.host, status, d.verdict, d.policy, conn.trace_id, direction, conn.mode,
                                     self.req_bytes, resp_bytes, flags, services[direction]))
