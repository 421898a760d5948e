"""The request target an HTTP rule is judged on, normalized as Istio's default (``BASE``).

Pure: a request's method and target in, the normalized path (what ``paths``/``notPaths``
match and what the workload receives), the query, and the authority of an absolute-form
target out, or ``BadTarget`` with the reason the request is answered 400. It never
decides a verdict and never touches a socket.

Rules (docs/policy.md "Path normalization", Istio "Authorization Policy Normalization"):
- absolute-form ``http://host/p?q`` (RFC 9112 3.2.2) is reduced to ``/p?q``; its authority
  replaces the Host header; ``*`` (asterisk-form) is kept for OPTIONS only;
- a fragment (``#``) cannot be in a request target (RFC 9112 3.2): 400;
- percent-encoded unreserved characters (RFC 3986 2.3: ALPHA DIGIT ``-._~``) are decoded,
  once; other triplets keep their encoding with upper-case hex (RFC 3986 6.2.2.1);
  ``%00`` and a ``%`` not followed by two hex digits are 400;
- ``\\`` becomes ``/`` (Envoy ``normalize_path``, Istio BASE);
- dot segments are removed (RFC 3986 5.2.4 remove_dot_segments);
- slashes are NOT merged (Istio's default is BASE, not MERGE_SLASHES), and ``%2F``/``%5C``
  stay encoded (only DECODE_AND_MERGE_SLASHES decodes them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
_ABSOLUTE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)$", re.S)


@dataclass(frozen=True, slots=True)
class Target:
    path: str  # normalized, no query: what policies match
    query: str  # "" or "?..." as received
    authority: str | None  # the authority of an absolute-form target

    @property
    def forward(self) -> str:
        """The request target the workload receives."""
        return self.path + self.query


@dataclass(frozen=True, slots=True)
class BadTarget:
    reason: str


def normalize_target(method: str, target: str) -> Target | BadTarget:
    if method == "CONNECT":
        return Target(target, "", None)  # authority-form (RFC 9112 3.2.3): no path to normalize
    if target == "*":
        return Target("*", "", None) if method == "OPTIONS" else BadTarget("'*' is only a target for OPTIONS")
    authority = None
    m = _ABSOLUTE.match(target)
    if m:
        if m.group(1).lower() not in ("http", "https"):
            return BadTarget(f"scheme {m.group(1)!r} is not http")
        authority, target = m.group(2), m.group(3)
        if "@" in authority:
            return BadTarget("userinfo in the target's authority")
        if not authority:
            return BadTarget("an absolute-form target without a host")
        if not target or target.startswith("?"):
            target = "/" + target
    if "#" in target:
        return BadTarget("a fragment in the request target")
    path, sep, query = target.partition("?")
    path = path.replace("\\", "/")
    if not path.startswith("/"):
        return BadTarget("the target is not origin-form or absolute-form")
    decoded = _decode_unreserved(path)
    if isinstance(decoded, BadTarget):
        return decoded
    return Target(remove_dot_segments(decoded), sep + query, authority)


def _decode_unreserved(path: str) -> str | BadTarget:
    if "%" not in path:
        return path
    out, i, n = [], 0, len(path)
    while i < n:
        ch = path[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        hx = path[i + 1:i + 3]
        if len(hx) != 2 or not set(hx) <= _HEX:
            return BadTarget(f"bad percent-encoding at {path[i:i + 3]!r}")
        b = int(hx, 16)
        if b == 0:
            return BadTarget("%00 in the path")
        out.append(chr(b) if b in _UNRESERVED else "%" + hx.upper())
        i += 3
    return "".join(out)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 for an absolute path, segment by segment."""
    if "." not in path:
        return path
    segs = path.split("/")[1:]
    out: list[str] = []
    for i, s in enumerate(segs):
        last = i == len(segs) - 1
        if s == ".":
            if last:
                out.append("")
        elif s == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(s)
    return "/" + "/".join(out)
