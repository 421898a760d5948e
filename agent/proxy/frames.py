"""Stream framing for reusable tunnels (ALPN ``hostmesh-streams/1``, docs/identity.md).

After the CONNECT exchange (h11, unchanged) each direction's bytes travel in frames:
a 4-byte big-endian length, then that many bytes. A zero length ends the direction
(its half-close). Once both directions ended the TLS connection carries the next
CONNECT. Pure: no sockets, no clock — the socket layer feeds it what it read and sends
what it returns.

Why not HTTP/1.1 chunked bodies through h11: measured, h11's receive buffer copies
every byte twice more (about as much CPU as decrypting it) and halved bulk throughput;
a length prefix is decoded in place, and payload goes out as slices of the read buffer.
"""

from __future__ import annotations

# Larger frames are refused: the socket layer writes at most one read buffer per frame.
MAX_FRAME = 1 << 24
HEADER = 4
END = b"\0\0\0\0"


class FrameError(ValueError):
    pass


class Framing:
    """One framed TLS connection's state: the incoming direction's decoder and whether
    each direction has ended. ``backlog``: bytes read before the socket layer took the
    leg (after the CONNECT head), decoded first. ``carry``: bytes that followed the
    incoming end frame — the start of the next request."""

    __slots__ = ("left", "head", "backlog", "carry", "in_done", "out_done")

    def __init__(self, backlog: bytes = b"") -> None:
        self.left = 0  # payload bytes still to come in the current incoming frame
        self.head = b""  # a frame header split across reads
        self.backlog = backlog
        self.carry = b""
        self.in_done = False
        self.out_done = False

    def decode(self, data: memoryview) -> list[memoryview]:
        """Payload slices of ``data`` (views into it, no copies), in order. Sets
        ``in_done`` at the end frame and keeps what follows it in ``carry``."""
        out = []
        i, n = 0, len(data)
        while i < n and not self.in_done:
            if self.left:
                k = min(self.left, n - i)
                out.append(data[i:i + k])
                self.left -= k
                i += k
                continue
            take = HEADER - len(self.head)
            self.head += bytes(data[i:i + take])
            i += take
            if len(self.head) < HEADER:
                break
            length = int.from_bytes(self.head, "big")
            self.head = b""
            if length == 0:
                self.in_done = True
                self.carry = bytes(data[i:])
            elif length > MAX_FRAME:
                raise FrameError(f"frame of {length} bytes (limit {MAX_FRAME})")
            else:
                self.left = length
        return out

    @property
    def done(self) -> bool:
        """Both directions ended on a frame boundary: the connection may carry another."""
        return self.in_done and self.out_done and not self.left and not self.head


def header(length: int) -> bytes:
    return length.to_bytes(HEADER, "big")
