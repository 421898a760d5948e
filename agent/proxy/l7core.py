"""Python's half of the core's HTTP path (dataplane/src/l7.rs): the core serves
HTTP/1.1 on an L7 port with hyper and sends one event per request head; this module
answers each with one non-blocking command and turns each finished exchange into the
connection's request records.

Per head: ``l7judge.judge_head`` (the h11 inspector's rules: 400 for ambiguous framing
or a target that cannot be normalized), then ``enforce.decide`` on the normalized
request when the connection is policed (per-request rules) — allow (forwarded with the
normalized target and one Host), or deny (403 naming the policy, the connection goes
on). Observed-only connections (the source's view, for HTTP metrics) are told their
heads and forward them unasked: only the records are made here. A head hyper
refused (400, 431) is only counted and recorded. What this module must never do: block
the trio thread, or answer a head another way than the h11 inspector would.
"""

from __future__ import annotations

import logging

from agent.proxy import enforce
from agent.proxy.connect import authority
from agent.proxy.conns import Conn
from agent.proxy.l7judge import (
    ALLOW,
    NO_REQUEST,
    denial,
    head_bytes,
    judge_head,
    needs_host,
    request_attrs_of,
)
from agent.proxy.l7records import submit_requests
from agent.rbac.pathnorm import Target, normalize_target

logger = logging.getLogger("hostmesh.l7")


class L7Conn:
    """One connection the core serves as HTTP: its Conn, whether its requests are
    policed, who reports them, and the heads answered whose exchange has not ended."""

    __slots__ = ("conn", "police", "reporters", "told", "peers", "heads")

    def __init__(self, conn: Conn, police: bool, reporters, told: bool = False) -> None:
        # told: the core forwards heads unasked (the source's view of a tunnel)
        self.conn, self.police, self.reporters, self.told = conn, police, list(reporters), told
        self.peers = None
        self.heads: dict[int, tuple] = {}  # request id -> (attrs, decision, flags)


def on_request(agent, core, cid: int, h: L7Conn, rid: int, method: str, target: str, version: str,
               headers) -> None:
    """Answer one head (``version``: "HTTP/1.0" or "HTTP/1.1"); an observed-only
    connection's heads were told, not asked: they are only noted for the record (the
    destination judges them)."""
    conn = h.conn
    if h.told:
        t = normalize_target(method, target)
        attrs = request_attrs_of(method.encode("latin-1"), headers, t, "") if isinstance(t, Target) else NO_REQUEST
        h.heads[rid] = (attrs, ALLOW, "")
        return
    m, t, v = method.encode("latin-1"), target.encode("latin-1"), version.encode()
    j = judge_head(head_bytes(m, t, v, headers), m, t, v[5:], headers)
    if j.why:
        agent.count("http_refused_400")
        logger.info("request refused", extra={"conn": conn.id, "status": 400, "error": j.why})
        h.heads[rid] = (NO_REQUEST, ALLOW, "DPE")
        core.http_answer(cid, rid, "bad", 400, f"bad request: {j.why}\n".encode())
        return
    d = enforce.decide(agent, conn, j.attrs) if h.police else ALLOW
    if h.police:
        agent.count(f"http_requests_{d.verdict}")
    h.heads[rid] = (j.attrs, d, "")
    if d.verdict == "deny":
        # Like Envoy's RBAC filter: 403 naming the policy, flags "-"
        body, policy = denial(d)
        conn.verdict, conn.policy, conn.reason = "deny", d.policy, d.reason
        core.http_answer(cid, rid, "deny", 403, body, policy=policy)
        return
    host = None
    if needs_host(j.target, headers):  # an HTTP/1.0 request without Host: the destination's
        host = j.attrs.host or authority(conn.dst_ip, conn.dst_port)
    core.http_answer(cid, rid, "allow", target=j.target.forward, host=host)


def on_exchange(agent, h: L7Conn, rid: int, status: int, req_bytes: int, resp_bytes: int, start: float,
                end: float, flags: str) -> None:
    attrs, d, own_flags = h.heads.pop(rid, (None, ALLOW, ""))
    if flags == "DPE" and not own_flags:  # the core refused what followed an allowed head (its body)
        agent.count(f"http_refused_{status}")
        logger.info("request refused", extra={"conn": h.conn.id, "status": status, "error": "request body"})
    h.peers = submit_requests(agent, h.conn, h.reporters, h.peers, start, end, attrs, d, status, req_bytes,
                              resp_bytes, own_flags or flags)


def on_refused(agent, h: L7Conn, status: int, reason: str, req_bytes: int, now: float) -> None:
    """hyper refused a head (it answered ``status``; the connection closed)."""
    agent.count(f"http_refused_{status}")
    logger.info("request refused", extra={"conn": h.conn.id, "status": status, "error": reason})
    h.peers = submit_requests(agent, h.conn, h.reporters, h.peers, now, now, NO_REQUEST, ALLOW, status,
                              req_bytes, 0, "DPE")
