"""The values of the tunnel's CONNECT head that Python hands the native core (no
sockets, no clock): the target authority, the W3C ``traceparent`` and its ids.

The core writes and parses the head itself (dataplane/src/connect.rs, httparse; SPEC.md:
``CONNECT <ip>:<port> HTTP/1.1`` with ``Host``, ``Forwarded: for="<src-ip>:<src-port>"``
and ``traceparent``; 400/403/431/502/503/504 answers). This module decides nothing.
"""

from __future__ import annotations

import os
import re

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def authority(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# os.urandom read in blocks of this many traceparents' worth (one getrandom call per
# block, not one per connection)
_ENTROPY_BLOCK = 256
_entropy = [b"", 0]  # (block, offset)


def _take24() -> bytes:
    block, at = _entropy
    if at + 24 > len(block):
        block, at = os.urandom(24 * _ENTROPY_BLOCK), 0
        _entropy[0] = block
    _entropy[1] = at + 24
    return block[at:at + 24]


def new_traceparent(entropy: bytes | None = None) -> tuple[str, str]:
    """A W3C traceparent and its trace id (``entropy``: 24 bytes, for tests)."""
    b = entropy if entropy is not None else _take24()
    trace, span = b[:16].hex(), b[16:24].hex()
    return f"00-{trace}-{span}-01", trace


def traceparent_ids(value: str) -> tuple[str, str] | None:
    """(trace id, parent span id) of a W3C traceparent, or None when it is not one."""
    m = _TRACEPARENT.match(value.strip().lower())
    if not m or m.group(1) == "0" * 32 or m.group(2) == "0" * 16:
        return None
    return m.group(1), m.group(2)
