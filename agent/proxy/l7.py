"""Per-request authorization on HTTP ports, at the destination: an HTTP/1.x proxy built
on h11, one h11 connection per side.

The source side (h11 server role) parses what the client sends; each request head is
checked (``h1rules``), its target normalized (``agent.rbac.pathnorm``) and evaluated with
its method, path, host and headers. An allowed request is written to the workload by the
workload side (h11 client role) — re-serialized, never the received bytes: the workload
sees exactly the framing and the path the policy judged (one Content-Length or chunked,
no obs-fold, no chunk extensions, CRLF line ends), so no request can be read one way here
and another way there. Responses come back the same way, so an HTTP/1.0 client gets
HTTP/1.0 framing (h11 closes instead of chunking) and an HTTP/1.0 request goes out as
HTTP/1.1 with ``Connection: close``; HTTP/1.0 keep-alive is declined (RFC 9112 9.3:
a server may always close). Bodies stream as they come, never buffered whole.

A denied request gets a 403 naming the policy; its body is read and dropped and the
keep-alive connection continues. A request that cannot be framed or normalized gets a
400 (h11's 501 for an unknown transfer coding) and the connection closes. Upgrades and
CONNECT switch to raw bytes once the workload agrees (101 / 2xx). What this module must
never do: forward a byte of a request before its head was allowed.

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
from agent.proxy.connect import authority
from agent.proxy.conns import Conn
from agent.proxy.contain import count_failure
from agent.proxy.l7judge import ALLOW, NO_REQUEST, denial, judge_head, request_attrs_of
from agent.proxy.l7records import submit_requests
from agent.rbac.evaluate import HttpAttrs

logger = logging.getLogger("hostmesh.l7")
# SPEC.md / h11: a request head beyond 16 KiB is refused (431).
MAX_HEAD = 16 * 1024
# A workload's response head may be larger (cookies): up to Envoy's default 60 KiB, and more.
MAX_RESPONSE_HEAD = 64 * 1024
_HOP = {b"connection", b"keep-alive", b"proxy-connection"}


def _reply(conn: h11.Connection, status: int, body: bytes, extra=(), close: bool = True) -> bytes:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return b""  # a response already started: nothing more can be said
    hs = [("content-type", "text/plain"), ("content-length", str(len(body))), *extra]
    if close:
        hs.append(("connection", "close"))
    out = conn.send(h11.Response(status_code=status, headers=hs))
    return out + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())


def request_attrs(ev: h11.Request, target, fallback_host: str) -> HttpAttrs:
    """What policies see of an h11 request (``l7judge.request_attrs_of``)."""
    return request_attrs_of(ev.method, ev.headers, target, fallback_host)


def upstream_request(ev: h11.Request, target, host: str) -> h11.Request:
    """The request the workload receives: normalized target, one Host, HTTP/1.1 (h11
    writes nothing else); an HTTP/1.0 client's request asks the workload to close."""
    headers = list(ev.headers.raw_items())
    if target.authority is not None or not any(k.lower() == b"host" for k, _ in headers):
        headers = [(b"Host", host.encode("latin-1"))] + [(k, v) for k, v in headers if k.lower() != b"host"]
    if ev.http_version < b"1.1":
        headers = [(k, v) for k, v in headers if k.lower() not in _HOP] + [(b"Connection", b"close")]
    return h11.Request(method=ev.method, target=target.forward.encode("latin-1"), headers=headers)


class _Done(Exception):
    pass


_ALLOW = ALLOW


def http_reporters(agent, conn: Conn) -> list[str]:
    """Who reports this connection's HTTP requests (``telemetry.http_metrics``): on a
    workload's HTTP port, the destination's agent and, with "both", the source's."""
    dst = conn.dst
    if agent.telemetry is None or dst is None or conn.dst_port not in dst.http_ports:
        return []
    setting = agent.config.telemetry.http_metrics
    if setting == "off":
        return []
    if not conn.enforced_here:  # the source's side of a tunnel
        return ["outbound"] if setting == "both" else []
    if conn.mode == "local" and conn.direction == "outbound" and setting == "both":
        return ["outbound", "inbound"]
    return ["inbound"]


async def relay_http(agent, conn: Conn, a: socket.socket, b: socket.socket, *, to_a: bytes = b"",
                     to_b: bytes = b"", police: bool = True, reporters=("inbound",)) -> tuple[int, int, str]:
    """Relay ``a`` (source) <-> ``b`` (workload), checking every request when ``police``
    and recording each exchange for ``reporters`` ("outbound": the source's view,
    "inbound": the destination's); returns (bytes to workload, bytes back, close reason)."""
    src = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    dst = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
    counts = [0, 0]
    conn.live = counts  # telemetry reads the bytes of a live connection here
    # fed: bytes received from the source; consumed: of those, what h11 has parsed
    state = {"reason": "closed", "raw": False, "fed": 0, "consumed": 0, "first_end": None}
    ex = _Exchange(agent, conn, reporters)
    cycle = [trio.Event()]
    conn.cancel_scope = trio.CancelScope()

    async def to_b_send(data: bytes) -> None:
        if data:
            await aio.send_all(b, data)
            counts[0] += len(data)

    async def to_a_send(data: bytes) -> None:
        if data:
            await aio.send_all(a, data)
            counts[1] += len(data)

    def next_cycle() -> None:
        # both exchanges over: ready for the next keep-alive request
        if src.our_state is h11.DONE and src.their_state is h11.DONE and dst.our_state is h11.DONE \
                and dst.their_state is h11.DONE:
            src.start_next_cycle()
            dst.start_next_cycle()
        cycle[0].set()
        cycle[0] = trio.Event()

    async def refuse(status: int, why: str) -> None:
        agent.count(f"http_refused_{status}")
        logger.info("request refused", extra={"conn": conn.id, "status": status, "error": why})
        reply = _reply(src, status, f"bad request: {why}\n".encode())
        await to_a_send(reply)
        ex.bad_request(status, state["fed"], len(reply))
        state["reason"] = "bad_request"
        raise _Done()

    async def to_server() -> None:
        pending = bytearray(to_b)
        if to_b:
            src.receive_data(to_b)
            state["fed"] = len(to_b)
        discard = False
        while not state["raw"]:
            try:
                ev = src.next_event()
            except h11.RemoteProtocolError as e:
                await refuse(e.error_status_hint, str(e))
            if ev is h11.NEED_DATA:
                data = await aio.recv_some(a)
                pending += data
                state["fed"] += len(data)
                src.receive_data(data)
                continue
            if ev is h11.PAUSED:
                await cycle[0].wait()
                continue
            # the bytes h11 consumed for this event (the head, for a Request)
            n = len(pending) - len(src.trailing_data[0])
            state["consumed"] = state["fed"] - len(src.trailing_data[0])
            raw = bytes(pending[:n]) if isinstance(ev, h11.Request) else b""
            del pending[:n]
            if isinstance(ev, h11.Request):
                discard = not await on_request(ev, raw)
            elif isinstance(ev, h11.Data):
                if not discard:
                    await to_b_send(dst.send(h11.Data(data=ev.data)))
            elif isinstance(ev, h11.EndOfMessage):
                ex.request_done(state["consumed"])
                if discard:
                    ex.end(403, ex.denied_reply)  # Envoy's RBAC: response_code 403, flags "-"
                    discard = False
                    if src.our_state is h11.MUST_CLOSE or src.their_state is h11.MUST_CLOSE:
                        state["reason"] = "denied"
                        raise _Done()
                    src.start_next_cycle()
                else:
                    await to_b_send(dst.send(h11.EndOfMessage()))
                    next_cycle()
            elif isinstance(ev, h11.ConnectionClosed):
                state["first_end"] = state["first_end"] or "client"
                aio.shutdown_write(b)
                return
        # switched to raw bytes: what the client sent after the upgrade request first
        await to_b_send(src.trailing_data[0])
        while data := await aio.recv_some(a):
            await to_b_send(data)
        state["first_end"] = state["first_end"] or "client"
        aio.shutdown_write(b)

    async def on_request(ev: h11.Request, raw: bytes) -> bool:
        """Decide one request head; True when it goes to the workload."""
        j = judge_head(raw, ev.method, ev.target, ev.http_version, ev.headers)
        if j.why:
            await refuse(400, j.why)
        target, attrs = j.target, j.attrs
        d = enforce.decide(agent, conn, attrs) if police else _ALLOW
        if police:
            agent.count(f"http_requests_{d.verdict}")
        ex.begin(attrs, d, counts[1])
        if d.verdict == "deny":
            # Like Envoy's RBAC filter: 403 naming the policy; the connection stays
            # usable, the denied request's body is read and dropped, never forwarded.
            body, policy = denial(d)
            extra = [("x-hostmesh-policy", policy)] if policy else []
            reply = _reply(src, 403, body, extra, close=False)
            await to_a_send(reply)
            ex.denied_reply = len(reply)
            conn.verdict, conn.policy, conn.reason = "deny", d.policy, d.reason
            return False
        host = attrs.host or authority(conn.dst_ip, conn.dst_port)  # an HTTP/1.0 request without Host
        await to_b_send(dst.send(upstream_request(ev, target, host)))
        return True

    async def to_client() -> None:
        await to_a_send(to_a)
        while not state["raw"]:
            data = await aio.recv_some(b)
            dst.receive_data(data)
            while True:
                try:
                    ev = dst.next_event()
                except h11.RemoteProtocolError as e:
                    logger.info("workload sent a bad response", extra={"conn": conn.id, "error": str(e)})
                    await to_a_send(_reply(src, 502, b"bad response from the workload\n"))
                    state["reason"] = "bad_response"
                    raise _Done() from None
                if ev is h11.NEED_DATA or ev is h11.PAUSED:
                    break
                if isinstance(ev, h11.ConnectionClosed):
                    state["reason"] = "closed"
                    state["first_end"] = state["first_end"] or "upstream"
                    raise _Done()
                if src.our_state not in (h11.IDLE, h11.SEND_RESPONSE, h11.SEND_BODY, h11.DONE):
                    # the client already got this proxy's own answer (a refusal racing the
                    # workload's response): nothing of the workload's may follow it
                    raise _Done()
                if isinstance(ev, (h11.Response, h11.InformationalResponse)):
                    if isinstance(ev, h11.Response):
                        ex.status = ev.status_code
                    await to_a_send(src.send(type(ev)(status_code=ev.status_code, reason=ev.reason,
                                                      headers=ev.headers.raw_items())))
                    if src.our_state is h11.SWITCHED_PROTOCOL:
                        ex.end(ev.status_code, counts[1] - ex.resp_mark, state["consumed"])
                        state["raw"] = True
                        cycle[0].set()
                        break
                elif isinstance(ev, h11.Data):
                    await to_a_send(src.send(h11.Data(data=ev.data)))
                elif isinstance(ev, h11.EndOfMessage):
                    await to_a_send(src.send(h11.EndOfMessage()))
                    ex.end(ex.status or 0, counts[1] - ex.resp_mark, state["consumed"])
                    if src.our_state is h11.MUST_CLOSE:
                        state["reason"] = "closed"
                        aio.shutdown_write(a)
                        raise _Done()
                    next_cycle()
        await to_a_send(dst.trailing_data[0])
        while data := await aio.recv_some(b):
            await to_a_send(data)
        state["first_end"] = state["first_end"] or "upstream"
        aio.shutdown_write(a)

    try:
        with conn.cancel_scope:
            async with trio.open_nursery() as n:
                n.start_soon(to_server)
                n.start_soon(to_client)
    except* _Done:
        pass
    except* OSError:
        state["reason"] = "reset"
    except* h11.LocalProtocolError as eg:
        # an exchange this proxy cannot write out (a bug or a case h11 refuses): this
        # connection ends, nothing else; logged and counted once
        state["reason"] = "protocol_error"
        count_failure(agent, "LocalProtocolError")
        logger.warning("http exchange failed", extra={"conn": conn.id, "error": str(eg.exceptions[0])})
        aio.reset(a)
        aio.reset(b)
    except* Exception:
        aio.reset(a)  # anything else: both sockets go now; ``contain`` logs and counts it
        aio.reset(b)
        raise
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
            self.begin(NO_REQUEST, _ALLOW, 0)
        self.end(status, reply, fed, "DPE")

    def end(self, status: int, resp_bytes: int, consumed: int | None = None, flags: str = "-") -> None:
        if self.attrs is None:
            return
        if self.req_bytes < 0:  # the response ended (or the connection did) before the request
            self.req_bytes = (consumed if consumed is not None else self.req_mark) - self.req_mark
        self._record(status, resp_bytes, flags)
        self.attrs = None

    def _record(self, status: int, resp_bytes: int, flags: str) -> None:
        self.peers = submit_requests(self.agent, self.conn, self.reporters, self.peers, self.start, time.time(),
                                     self.attrs, self.d, status, self.req_bytes, resp_bytes, flags)
