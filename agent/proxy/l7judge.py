"""What happens to one HTTP request head on an L7 port, as a pure function: the same
decision for the Rust core's HTTP path (agent/proxy/l7core.py, heads parsed by hyper)
and the h11 inspector (agent/proxy/l7.py).

In: the head as parsed (method, target, version, field lines as raw name/value bytes,
in order) and, on the h11 path, its raw bytes; out: a ``Judged`` — the reason for a 400 (``h1rules``:
ambiguous framing, obs-fold, duplicate Host, a lower-case method; ``pathnorm``: a target
that cannot be normalized), or the normalized target and what policies see of the
request (``HttpAttrs``). Policy evaluation itself stays ``enforce.decide`` (it counts).
What this module must never do: I/O, or judge a target other than the one forwarded.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.proxy.h1rules import check_fields, check_head
from agent.rbac.evaluate import Decision, HttpAttrs
from agent.rbac.pathnorm import BadTarget, Target, normalize_target

ALLOW = Decision("allow")
# What a request record shows of a head that was refused before it was understood.
NO_REQUEST = HttpAttrs("-", "-", "", {})


@dataclass(frozen=True, slots=True)
class Judged:
    why: str | None  # set: answer 400 with it and close
    target: Target | None = None
    attrs: HttpAttrs | None = None


def request_attrs_of(method: bytes, headers, target: Target, fallback_host: str) -> HttpAttrs:
    """What policies see of a request: duplicate headers joined with ", " (Istio
    normalization, "Duplicate headers"), the authority of an absolute-form target as
    the host (RFC 9112 3.2.2)."""
    hdrs: dict[str, list[str]] = {}
    for k, v in headers:
        hdrs.setdefault(k.decode().lower(), []).append(v.decode("latin-1"))
    joined = {k: [", ".join(v)] for k, v in hdrs.items()}
    host = target.authority if target.authority is not None else (hdrs.get("host") or [fallback_host])[0]
    if target.authority is not None:
        joined["host"] = [host]
    return HttpAttrs(method.decode(), target.path, host, joined)


def judge_head(raw: bytes, method: bytes, target: bytes, http_version: bytes, headers) -> Judged:
    """The h11 inspector's head (``raw`` as received). ``http_version``: b"1.0" or b"1.1"."""
    return _judged(check_head(raw, method, http_version), method, target, headers)


def judge_fields(method: bytes, target: bytes, http_version: bytes, headers) -> Judged:
    """The core's head, as hyper parsed it: the same rules on its (name, value) pairs
    (no head bytes rebuilt to be split again)."""
    return _judged(check_fields(method, http_version, headers), method, target, headers)


def _judged(why: str | None, method: bytes, target: bytes, headers) -> Judged:
    if why:
        return Judged(why)
    t = normalize_target(method.decode("latin-1"), target.decode("latin-1"))
    if isinstance(t, BadTarget):
        return Judged(t.reason)
    return Judged(None, t, request_attrs_of(method, headers, t, ""))


def told_attrs(method: str, target: str, host: str) -> HttpAttrs:
    """What the record shows of a head the core forwarded unasked (the source's view):
    the normalized path, the authority of an absolute-form target or the first Host."""
    t = normalize_target(method, target)
    if not isinstance(t, Target):
        return NO_REQUEST
    return HttpAttrs(method, t.path, t.authority if t.authority is not None else host, {})


def memo_key(method: bytes, target: bytes, http_version: bytes, headers) -> tuple:
    """What of a head the decision reads when no policy reads request headers: the key
    under which the core reuses an allowed answer (dataplane/src/l7memo.rs builds the
    same; tests/unit/test_l7memo.py proves equal keys get equal answers)."""
    hosts = tuple(v for k, v in headers if k.lower() == b"host")
    cls = sum(1 + v.count(b",") for k, v in headers if k.lower() == b"content-length")
    te = any(k.lower() == b"transfer-encoding" for k, _ in headers)
    return (method, target, http_version, hosts, cls, te)


def needs_host(target: Target, headers) -> bool:
    """The workload gets one Host: the absolute-form target's authority, or the
    destination's when the request has none (an HTTP/1.0 request)."""
    return target.authority is not None or not any(k.lower() == b"host" for k, _ in headers)


def denial(d: Decision) -> tuple[bytes, str | None]:
    """Envoy's RBAC answer: the 403's body naming the policy, and its x-hostmesh-policy."""
    return f"RBAC: access denied by {d.policy or 'policy'}\n".encode(), d.policy or None
