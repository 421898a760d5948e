"""TLS 1.3 half-close for a non-blocking ``ssl.SSLSocket``: send close_notify once.

Python's ``SSLSocket.unwrap()`` calls ``SSL_shutdown`` twice; the second call reads the
peer's records and fails with ``APPLICATION_DATA_AFTER_CLOSE_NOTIFY`` when application
data is already waiting — losing it (measured: a half-closed tunnel with bytes still
flowing back breaks). OpenSSL itself supports TLS 1.3 half-close: one ``SSL_shutdown``
sends close_notify and ``SSL_read`` keeps working. We call it once through ctypes on the
socket's ``SSL*``, found in CPython's ``PySSLSocket`` (PyObject_HEAD, Socket, ssl — a
layout unchanged since 3.x) and verified with ``SSL_get_fd`` before use. If anything
does not check out we fall back to a TCP FIN without close_notify (a ragged EOF, which
the peer's reader treats as end of stream).
"""

from __future__ import annotations

import ctypes
import socket
import ssl

_lib = None
_ok = None


def _load() -> bool:
    global _lib, _ok
    if _ok is None:
        try:
            lib = ctypes.CDLL(ssl._ssl.__file__)  # dlsym searches libssl, its dependency
            lib.SSL_shutdown.argtypes = [ctypes.c_void_p]
            lib.SSL_shutdown.restype = ctypes.c_int
            lib.SSL_get_fd.argtypes = [ctypes.c_void_p]
            lib.SSL_get_fd.restype = ctypes.c_int
            lib.SSL_in_init.argtypes = [ctypes.c_void_p]
            lib.SSL_in_init.restype = ctypes.c_int
            lib.ERR_clear_error.argtypes = []
            lib.ERR_clear_error.restype = None
            _lib, _ok = lib, True
        except (OSError, AttributeError):
            _ok = False
    return _ok


def _ssl_ptr(sock: ssl.SSLSocket) -> int | None:
    obj = getattr(sock, "_sslobj", None)
    if obj is None or not _load():
        return None
    ptr = ctypes.c_void_p.from_address(id(obj) + 3 * ctypes.sizeof(ctypes.c_void_p)).value
    if not ptr or _lib.SSL_get_fd(ptr) != sock.fileno():
        return None
    return ptr


def shutdown_write(sock: socket.socket) -> None:
    """Half-close ``sock``'s sending side (close_notify for TLS, then TCP FIN)."""
    if isinstance(sock, ssl.SSLSocket):
        ptr = _ssl_ptr(sock)
        # Mid-handshake (e.g. a TLS 1.3 server still owing its session tickets) there is
        # no close_notify to send: the TCP FIN alone ends the stream.
        if ptr is not None and not _lib.SSL_in_init(ptr):
            if _lib.SSL_shutdown(ptr) < 0:  # 0: close_notify sent, peer's not yet seen — expected
                # a failure leaves an entry on OpenSSL's per-thread error queue, which the
                # next SSL call on ANY connection of this thread would report as its own
                _lib.ERR_clear_error()
    try:
        socket.socket.shutdown(sock, socket.SHUT_WR)
    except OSError:
        pass
