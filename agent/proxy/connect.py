"""The tunnel's CONNECT exchange on top of h11 (no sockets, no clock).

After the mutual TLS handshake the client sends one ``CONNECT <ip>:<port> HTTP/1.1``
with ``Host``, ``Forwarded: for="<src-ip>:<src-port>"`` and ``traceparent``; the server
answers ``200`` and both sides switch to raw bytes, or an error status (SPEC.md):
400 bad request, 403 denied by policy (``x-hostmesh-policy``), 431 header block over
16 KiB, 502/503/504 upstream refused / unknown destination / timed out. Bytes that
arrive after the head belong to the stream and are handed back as ``leftover``.

Reusable streams (a hostmesh extension, docs/decisions/0001-tunnel-reuse.md): when
both agents offer the ALPN protocol ``hostmesh-streams/1``, the client may instead send
``POST /hostmesh/v1/stream`` with the same headers (``Host`` names the target) and a
chunked body carrying the source's bytes; ``200`` comes with a chunked body carrying
the destination's. A direction ends (half-close) with its last chunk, so once both
bodies are complete the TLS connection carries the next request. Statuses are the same;
an error response closes the connection. One ``h11.Connection`` per TLS connection
keeps the framing state across requests.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

import h11

# SPEC.md: the CONNECT header block is limited to 16 KiB; beyond it, 431.
MAX_HEADER_BYTES = 16 * 1024
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_FORWARDED = re.compile(r'^for="?\[?([0-9a-fA-F:.]+)\]?:(\d+)"?$')
REASONS = {200: b"OK", 400: b"Bad Request", 403: b"Forbidden", 431: b"Request Header Fields Too Large",
           502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout"}


def authority(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def new_traceparent(entropy: bytes | None = None) -> tuple[str, str]:
    """A W3C traceparent and its trace id (``entropy``: 24 bytes, for tests)."""
    b = entropy if entropy is not None else os.urandom(24)
    trace, span = b[:16].hex(), b[16:24].hex()
    return f"00-{trace}-{span}-01", trace



def traceparent_ids(value: str) -> tuple[str, str] | None:
    """(trace id, parent span id) of a W3C traceparent, or None when it is not one."""
    m = _TRACEPARENT.match(value.strip().lower())
    if not m or m.group(1) == "0" * 32 or m.group(2) == "0" * 16:
        return None
    return m.group(1), m.group(2)


# ALPN protocol both agents offer when they can carry reusable streams; the request
# target of a stream (its destination is the Host header).
ALPN_STREAMS = "hostmesh-streams/1"
STREAM_TARGET = b"/hostmesh/v1/stream"


def _tunnel_headers(dst_ip: str, dst_port: int, src_ip: str, src_port: int, traceparent: str) -> list:
    target = authority(dst_ip, dst_port).encode()
    fwd = f'for="{authority(src_ip, src_port)}"'.encode()
    return [(b"host", target), (b"forwarded", fwd), (b"traceparent", traceparent.encode())]


def build_connect(dst_ip: str, dst_port: int, src_ip: str, src_port: int, traceparent: str) -> bytes:
    c = h11.Connection(h11.CLIENT)
    return c.send(h11.Request(method=b"CONNECT", target=authority(dst_ip, dst_port).encode(),
                              headers=_tunnel_headers(dst_ip, dst_port, src_ip, src_port, traceparent)))


def client_connection() -> h11.Connection:
    """The client's framing state for one TLS connection carrying streams."""
    return h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)


def build_stream_request(c: h11.Connection, dst_ip: str, dst_port: int, src_ip: str, src_port: int,
                         traceparent: str) -> bytes:
    headers = _tunnel_headers(dst_ip, dst_port, src_ip, src_port, traceparent)
    return c.send(h11.Request(method=b"POST", target=STREAM_TARGET,
                              headers=[*headers, (b"transfer-encoding", b"chunked")]))


def build_response(status: int, headers: list[tuple[str, str]] | None = None,
                   conn: h11.Connection | None = None) -> bytes:
    """The answer to a CONNECT (``conn`` None) or to a stream request on ``conn``."""
    if conn is None:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(b"CONNECT x:1 HTTP/1.1\r\nhost: x:1\r\n\r\n")
        conn.next_event()
        stream = False
    else:
        stream = True
    hs = [(k.encode(), v.encode()) for k, v in (headers or [])]
    if status != 200:
        hs += [(b"content-length", b"0")] + ([(b"connection", b"close")] if stream else [])
    elif stream:
        hs.append((b"transfer-encoding", b"chunked"))
    return conn.send(h11.Response(status_code=status, headers=hs, reason=REASONS.get(status, b"")))


@dataclass
class ConnectRequest:
    target_ip: str
    target_port: int
    forwarded_for: tuple[str, int] | None
    traceparent: str | None
    leftover: bytes = b""
    stream: bool = False  # a reusable stream (its body bytes stay in the parser's h11 state)


@dataclass
class ConnectError:
    status: int
    message: str


@dataclass
class ConnectResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    leftover: bytes = b""


def _parse_authority(raw: str) -> tuple[str, int]:
    m = re.match(r"^\[([0-9a-fA-F:.]+)\]:(\d{1,5})$", raw) or re.match(r"^([0-9.]+):(\d{1,5})$", raw)
    if not m:
        raise ValueError(f"CONNECT target {raw!r} is not <ip>:<port>")
    ip, port = str(ipaddress.ip_address(m.group(1))), int(m.group(2))
    if not 0 < port < 65536:
        raise ValueError(f"CONNECT target port {port} out of range")
    return ip, port


class ConnectRequestParser:
    """Server side: feed bytes until a ConnectRequest or ConnectError comes out.
    ``conn``: the TLS connection's framing state when it already carried a stream."""

    def __init__(self, conn: h11.Connection | None = None, streams: bool = False) -> None:
        self.conn = conn or h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._streams = streams
        self._fed = 0

    def feed(self, data: bytes) -> ConnectRequest | ConnectError | None:
        self._fed += len(data)
        if data:
            self.conn.receive_data(data)
        try:
            ev = self.conn.next_event()
        except h11.RemoteProtocolError as e:
            status = e.error_status_hint
            return ConnectError(431 if status == 431 else 400, str(e))
        if ev is h11.NEED_DATA:
            return None
        if not isinstance(ev, h11.Request):
            return ConnectError(400, "expected a CONNECT request")
        if self._fed - len(self.conn.trailing_data[0]) > MAX_HEADER_BYTES:
            return ConnectError(431, f"header block over {MAX_HEADER_BYTES} bytes")
        hdrs = {k.decode().lower(): v.decode("latin-1") for k, v in ev.headers}
        stream = self._streams and ev.method == b"POST" and ev.target == STREAM_TARGET
        if stream and hdrs.get("transfer-encoding", "").lower() != "chunked":
            return ConnectError(400, "a stream request must have a chunked body")
        if ev.method != b"CONNECT" and not stream:
            return ConnectError(400, f"method {ev.method.decode(errors='replace')} is not CONNECT")
        try:
            ip, port = _parse_authority(hdrs.get("host", "") if stream else ev.target.decode("ascii"))
        except (ValueError, UnicodeDecodeError) as e:
            return ConnectError(400, str(e))
        fwd = None
        if "forwarded" in hdrs:
            m = _FORWARDED.match(hdrs["forwarded"].strip())
            if not m:
                return ConnectError(400, "Forwarded header is not for=\"<ip>:<port>\"")
            try:
                fwd = (str(ipaddress.ip_address(m.group(1))), int(m.group(2)))
            except ValueError:
                return ConnectError(400, "Forwarded header has an invalid address")
        if stream:
            return ConnectRequest(ip, port, fwd, hdrs.get("traceparent"), stream=True)
        leftover, _ = self.conn.trailing_data
        return ConnectRequest(ip, port, fwd, hdrs.get("traceparent"), bytes(leftover))


class ConnectResponseParser:
    """Client side: feed bytes until the response head is complete. ``conn``: the
    stream's framing state (its request already sent); None for a CONNECT."""

    def __init__(self, conn: h11.Connection | None = None) -> None:
        self._stream = conn is not None
        if conn is None:
            conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
            conn.send(h11.Request(method=b"CONNECT", target=b"x:1", headers=[(b"host", b"x:1")]))
        self._c = conn

    def feed(self, data: bytes) -> ConnectResponse | None:
        self._c.receive_data(data)
        while True:
            try:
                ev = self._c.next_event()
            except h11.RemoteProtocolError as e:
                raise ValueError(f"malformed CONNECT response: {e}") from None
            if ev is h11.NEED_DATA:
                return None
            if not isinstance(ev, h11.InformationalResponse):
                break
        if not isinstance(ev, h11.Response):
            raise ValueError("malformed CONNECT response")
        hs = [(k.decode().lower(), v.decode("latin-1")) for k, v in ev.headers]
        # a stream's first body bytes stay in the h11 state, where the socket layer reads them
        leftover = bytes(self._c.trailing_data[0]) if ev.status_code == 200 and not self._stream else b""
        return ConnectResponse(ev.status_code, hs, leftover)
