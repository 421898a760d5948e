"""What a request head must satisfy, beyond what h11 already enforces, before the L7
inspector forwards it. Pure: the raw head (as received) and h11's parsed request in, or the
(name, value) field lines a parser already split (the core's hyper path), the reason
for a 400 out (or None). It never parses HTTP itself — h11 did — it only looks at
the header lines h11 folded or merged, so no two readings of one request can exist.

Rules (docs/policy.md "Request framing"):
- RFC 9112 6.3 (3): ``Transfer-Encoding`` with ``Content-Length`` "ought to be handled as
  an error"; a proxy refuses it (or drops Content-Length): 400.
- RFC 9112 6.3 (5) / RFC 9110 8.6: more than one ``Content-Length`` field line or a list
  value (``5, 5``): 400, even when the values agree (h11 would quietly merge them).
- RFC 9112 6.1: ``Transfer-Encoding`` in an HTTP/1.0 request means faulty framing: 400.
- RFC 9112 5.2: obs-fold (a field line starting with SP/HTAB) in a request: 400.
- RFC 9112 3.2: more than one ``Host`` field line: 400.
- Istio normalization ("Method not in upper case"): a method with lower-case letters: 400.
Unknown transfer codings, NUL and other bytes h11 refuses are answered by h11's own
status hint (400 or 501) before this runs.
"""

from __future__ import annotations


def check_head(raw: bytes, method: bytes, http_version: bytes) -> str | None:
    """The raw head as received (the h11 inspector's path): its line rules, then
    ``check_fields`` on its field lines."""
    lines = raw.lstrip(b"\r\n").split(b"\n")[1:]
    fields = []
    for line in lines:
        line = line.rstrip(b"\r")
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            return "obsolete line folding (obs-fold) in the request head"
        name, _, value = line.partition(b":")
        fields.append((name, value))
    return check_fields(method, http_version, fields)


def check_fields(method: bytes, http_version: bytes, fields) -> str | None:
    """The rules on a head's (name, value) field lines, in order: what the core's path
    checks directly (hyper parsed the lines and refused obs-fold, bare CR and NUL)."""
    if method != method.upper():
        return "method not in upper case"
    content_lengths = hosts = 0
    transfer_encoding = False
    for name, value in fields:
        name = name.lower()
        if name == b"content-length":
            content_lengths += 1 + value.count(b",")
        elif name == b"transfer-encoding":
            transfer_encoding = True
        elif name == b"host":
            hosts += 1
    if content_lengths > 1:
        return "more than one Content-Length"
    if transfer_encoding and content_lengths:
        return "both Transfer-Encoding and Content-Length (RFC 9112 6.3)"
    if transfer_encoding and http_version < b"1.1":
        return "Transfer-Encoding in an HTTP/1.0 request"
    if hosts > 1:
        return "more than one Host"
    return None
