"""The tunnel's CONNECT exchange on top of h11 (no sockets, no clock).

After the mutual TLS handshake the client sends one ``CONNECT <ip>:<port> HTTP/1.1``
with ``Host``, ``Forwarded: for="<src-ip>:<src-port>"`` and ``traceparent``; the server
answers ``200`` and both sides switch to raw bytes, or an error status (SPEC.md):
400 bad request, 403 denied by policy (``x-hostmesh-policy``), 431 header block over
16 KiB, 502/503/504 upstream refused / unknown destination / timed out. Bytes that
arrive after the head belong to the stream and are handed back as ``leftover``.

Reusable streams (a hostmesh extension, docs/decisions/0001-tunnel-reuse.md): when
both agents offer the ALPN protocol ``hostmesh-streams/1`` the exchange is the same,
but after ``200`` each direction's bytes travel in length-prefixed frames
(``frames.py``) whose empty frame ends the direction, so once both ended the TLS
connection carries the next CONNECT.
"""

from __future__ import annotations

import functools
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


# ALPN protocol both agents offer when they can carry reusable streams.
ALPN_STREAMS = "hostmesh-streams/1"


def streams_negotiated(tls, offered: tuple[str, ...]) -> bool:
    """Whether the handshake on ``tls`` chose reusable streams (``offered``: what this
    agent offers, empty when it does not)."""
    return bool(offered) and tls.selected_alpn_protocol() in offered


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


def build_connect(dst_ip: str, dst_port: int, src_ip: str, src_port: int, traceparent: str) -> bytes:
    c = h11.Connection(h11.CLIENT)
    target = authority(dst_ip, dst_port).encode()
    fwd = f'for="{authority(src_ip, src_port)}"'.encode()
    return c.send(h11.Request(method=b"CONNECT", target=target,
                              headers=[(b"host", target), (b"forwarded", fwd), (b"traceparent", traceparent.encode())]))


def build_response(status: int, headers: list[tuple[str, str]] | None = None) -> bytes:
    return _response(status, tuple(headers or ()))


@functools.lru_cache(maxsize=256)
def _response(status: int, headers: tuple[tuple[str, str], ...]) -> bytes:
    """h11's bytes for one answer, kept: the same few answers repeat for every
    connection (making one costs ~20 us, a lookup ~0.3 us)."""
    c = h11.Connection(h11.SERVER)
    c.receive_data(b"CONNECT x:1 HTTP/1.1\r\nhost: x:1\r\n\r\n")
    c.next_event()
    hs = [(k.encode(), v.encode()) for k, v in (headers or [])]
    if status != 200:
        hs.append((b"content-length", b"0"))
    return c.send(h11.Response(status_code=status, headers=hs, reason=REASONS.get(status, b"")))


@dataclass
class ConnectRequest:
    target_ip: str
    target_port: int
    forwarded_for: tuple[str, int] | None
    traceparent: str | None
    leftover: bytes = b""


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
    """Server side: feed bytes until a ConnectRequest or ConnectError comes out."""

    def __init__(self) -> None:
        self._c = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._fed = 0

    def feed(self, data: bytes) -> ConnectRequest | ConnectError | None:
        self._fed += len(data)
        self._c.receive_data(data)
        try:
            ev = self._c.next_event()
        except h11.RemoteProtocolError as e:
            status = e.error_status_hint
            return ConnectError(431 if status == 431 else 400, str(e))
        if ev is h11.NEED_DATA:
            return None
        if not isinstance(ev, h11.Request):
            return ConnectError(400, "expected a CONNECT request")
        if self._fed - len(self._c.trailing_data[0]) > MAX_HEADER_BYTES:
            return ConnectError(431, f"header block over {MAX_HEADER_BYTES} bytes")
        if ev.method != b"CONNECT":
            return ConnectError(400, f"method {ev.method.decode(errors='replace')} is not CONNECT")
        try:
            ip, port = _parse_authority(ev.target.decode("ascii"))
        except (ValueError, UnicodeDecodeError) as e:
            return ConnectError(400, str(e))
        hdrs = {k.decode().lower(): v.decode("latin-1") for k, v in ev.headers}
        fwd = None
        if "forwarded" in hdrs:
            m = _FORWARDED.match(hdrs["forwarded"].strip())
            if not m:
                return ConnectError(400, "Forwarded header is not for=\"<ip>:<port>\"")
            try:
                fwd = (str(ipaddress.ip_address(m.group(1))), int(m.group(2)))
            except ValueError:
                return ConnectError(400, "Forwarded header has an invalid address")
        leftover, _ = self._c.trailing_data
        return ConnectRequest(ip, port, fwd, hdrs.get("traceparent"), bytes(leftover))


class ConnectResponseParser:
    """Client side: feed bytes until the response head is complete."""

    def __init__(self) -> None:
        self._c = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._c.send(h11.Request(method=b"CONNECT", target=b"x:1", headers=[(b"host", b"x:1")]))

    def _next(self):
        try:
            return self._c.next_event()
        except h11.RemoteProtocolError as e:
            raise ValueError(f"malformed CONNECT response: {e}") from None

    def feed(self, data: bytes) -> ConnectResponse | None:
        self._c.receive_data(data)
        ev = self._next()
        while isinstance(ev, h11.InformationalResponse):  # (feed(b"") would mean EOF to h11)
            ev = self._next()
        if ev is h11.NEED_DATA:
            return None
        if not isinstance(ev, h11.Response):
            raise ValueError("malformed CONNECT response")
        hs = [(k.decode().lower(), v.decode("latin-1")) for k, v in ev.headers]
        leftover = bytes(self._c.trailing_data[0]) if ev.status_code == 200 else b""
        return ConnectResponse(ev.status_code, hs, leftover)
