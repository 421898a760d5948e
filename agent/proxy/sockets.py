"""Socket helpers for the data plane: the transparent listeners Python creates and hands
to the native core, and the connects that preserve the source address (the L7
inspector's upstream legs). Every socket here carries SO_MARK 0x539 (the
capture rules skip it) and TCP_NODELAY (NOTES.md: Nagle + delayed ACK cost ~88 ms per
request/response through a relay)."""

from __future__ import annotations

import errno
import ipaddress
import socket

import trio

from agent import AGENT_MARK

# Constants Python lacks (linux/in.h, linux/netfilter_ipv4.h).
IP_RECVORIGDSTADDR = 20
IP_FREEBIND = 15
IPV6_TRANSPARENT = 75
SOL_IPV6 = 41
# Pending connections per listener; SYN floods are bounded by the kernel's somaxconn.
BACKLOG = 4096


def _family(host: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def _mark(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, AGENT_MARK)


def _transparent(s: socket.socket, family: int) -> None:
    if family == socket.AF_INET6:
        s.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)
    else:
        s.setsockopt(socket.SOL_IP, socket.IP_TRANSPARENT, 1)


def make_listener(host: str, port: int, *, transparent: bool = True, reuseport: bool = True,
                  backlog: int = BACKLOG) -> socket.socket:
    fam = _family(host)
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if transparent:
            _transparent(s, fam)
        _mark(s)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.bind((host, port))
        s.listen(backlog)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def connect_socket(dst: tuple[str, int], *, bind_src: str | None = None,
                   transparent: bool | None = None) -> socket.socket:
    """A non-blocking, marked socket whose connect is in progress; bound to ``bind_src``
    (port 0) with IP_TRANSPARENT when the original source address must be preserved.
    ``transparent`` defaults to "when ``bind_src`` is given"; ``transparent=False`` with
    a ``bind_src`` binds to a local address of this host (IP_FREEBIND not needed)."""
    if transparent is None:
        transparent = bind_src is not None
    fam = _family(dst[0])
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        _mark(s)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if bind_src is not None and _family(bind_src) == fam:
            if transparent:
                _transparent(s, fam)
            s.bind((bind_src, 0))
        s.setblocking(False)
        err = s.connect_ex(dst)
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, f"connect to {dst[0]}:{dst[1]}: {errno.errorcode.get(err, err)}")
    except BaseException:
        s.close()
        raise
    return s


async def connect(dst: tuple[str, int], *, bind_src: str | None = None, timeout: float = 5.0) -> socket.socket:
    """Connect (trio): raises OSError (refused, unreachable) or trio.TooSlowError."""
    s = connect_socket(dst, bind_src=bind_src)
    try:
        with trio.fail_after(timeout):
            await trio.lowlevel.wait_writable(s)
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, f"connect to {dst[0]}:{dst[1]}: {errno.errorcode.get(err, err)}")
    except BaseException:
        s.close()
        raise
    return s
