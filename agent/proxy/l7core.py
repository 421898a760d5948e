"""Python's half of the core's HTTP path (dataplane/src/l7.rs): the core serves
HTTP/1.1 on an L7 port with hyper and sends one event per request head; this module
answers each with one non-blocking command and turns the finished exchanges, which the
core hands over in batches (``on_exchanges``), into the connections' request records.

Per head: ``l7judge.judge_fields`` (the h11 inspector's rules on the field lines hyper
parsed: 400 for ambiguous framing or a target that cannot be normalized), then
``enforce.decide`` on the normalized request when the connection is policed
(per-request rules) — allow (forwarded with the normalized target and one Host), or
deny (403 naming the policy, the connection goes on). A plain allow that reads no
request header is handed to the core as a memo (dataplane/src/l7memo.rs): later heads
of the connection with the same key get it without an event, until the next policy
swap, and their exchanges name it, so each is still counted and recorded as decided.
Observed-only connections (the source's view, for HTTP metrics) are not asked: the
core forwards their heads and each exchange's event carries what its record needs. A head hyper
refused (400, 431) is only counted and recorded. What this module must never do: block
the trio thread, or answer a head another way than the h11 inspector would.
"""

from __future__ import annotations

import logging

from agent.proxy import enforce
from agent.proxy.connect import authority
from agent.proxy.conns import Conn
from agent.proxy.l7judge import ALLOW, NO_REQUEST, denial, judge_fields, needs_host, told_attrs
from agent.proxy.l7records import peers_of, record_type, submit_requests
from agent.rbac.evaluate import HttpAttrs

logger = logging.getLogger("hostmesh.l7")

# Decisions one connection lets the core reuse (tokens 1..MAX_MEMOS; the core keeps at
# most limits.rs MAX_L7_MEMO of them at a time): past it, heads are asked as before.
MAX_MEMOS = 64
_UNSET = object()


class L7Conn:
    """One connection the core serves as HTTP: its Conn, whether its requests are
    policed, who reports them, the heads answered whose exchange has not ended, and the
    decisions the core may reuse (by token - 1)."""

    __slots__ = ("conn", "police", "reporters", "told", "peers", "heads", "memos", "seen", "trace")

    def __init__(self, conn: Conn, police: bool, reporters, told: bool = False) -> None:
        # told: the core forwards heads unasked (the source's view of a tunnel)
        self.conn, self.police, self.reporters, self.told = conn, police, list(reporters), told
        self.peers = None
        self.heads: dict[int, tuple] = {}  # request id -> (attrs, decision, flags)
        self.memos: list[tuple] = []  # token - 1 -> (attrs, decision)
        self.seen: dict[tuple, object] = {}  # told (method, target, host) -> its HttpAttrs
        self.trace = (_UNSET, None)  # (conn.trace, conn.trace_id): its records' trace id, formatted once


def on_request(agent, core, cid: int, h: L7Conn, rid: int, method: str, target: str, version: str,
               headers) -> None:
    """Answer one head (``version``: "HTTP/1.0" or "HTTP/1.1")."""
    conn = h.conn
    m, t = method.encode("latin-1"), target.encode("latin-1")
    j = judge_fields(m, t, version[5:].encode(), headers)
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
    memo = None
    if len(h.memos) < MAX_MEMOS and (not h.police or enforce.reusable(agent, conn, d)):
        # the same key gets this same answer while these policies are in force: the core
        # carries it out itself, and the exchange names the token (on_exchange)
        a = j.attrs  # what the record reads of it (its joined headers are not kept per memo)
        h.memos.append((HttpAttrs(a.method, a.path, a.host), d))
        memo = (len(h.memos), agent.policies.generation)
    core.http_answer(cid, rid, "allow", target=j.target.forward, host=host, memo=memo)


def on_exchange(agent, h: L7Conn, rid: int, status: int, req_bytes: int, resp_bytes: int, start: float,
                end: float, flags: str, memo: int = 0, told=None) -> None:
    """One finished exchange of ``h`` (``on_exchanges`` with one)."""
    failed = on_exchanges(agent, {0: h}, [(0, rid, status, req_bytes, resp_bytes, start, end, flags, memo, told)])
    if failed:
        raise failed[0][1]


def on_exchanges(agent, conns: dict, evs) -> list[tuple[int, Exception]]:
    """A batch of finished exchanges, each (connection id, request id, status, request
    bytes, response bytes, start, end, flags, memo, told), in the order they ended:
    their records. ``conns``: connection id -> L7Conn (an exchange of none is dropped:
    its connection is gone). ``memo``: the core reused decision ``memo`` (counted as a
    decision now, as the head it answered was); ``told``: a told head's (method,
    target, host). One loop with the lookups hoisted (the per-connection part of a
    record is made once per connection): the same counts and records as one call per
    exchange. Returns (connection id, error) for each exchange that failed, the others
    done."""
    tel = agent.telemetry
    record, node, count = record_type(), agent.config.node.name, agent.count
    failed, recs = [], []
    reused: dict = {}  # (connection id, memo) -> [L7Conn, decision, attrs, exchanges]: counted once
    for cid, rid, status, req_bytes, resp_bytes, start, end, flags, memo, told in evs:
        h = conns.get(cid)
        if h is None:
            continue
        try:
            if told is not None:
                # a told connection's heads repeat too: what each distinct one shows is derived once
                attrs = h.seen.get(told)
                if attrs is None:
                    attrs = told_attrs(*told)
                    if len(h.seen) < MAX_MEMOS:
                        h.seen[told] = attrs
                d, own_flags = ALLOW, ""
            elif memo:
                attrs, d = h.memos[memo - 1]
                own_flags = ""
                if h.police:
                    r = reused.get((cid, memo))
                    if r is None:
                        reused[(cid, memo)] = [h, d, attrs, 1]
                    else:
                        r[3] += 1
            else:
                attrs, d, own_flags = h.heads.pop(rid, (None, ALLOW, ""))
            if flags == "DPE" and not own_flags:  # the core refused what followed an allowed head (its body)
                count(f"http_refused_{status}")
                logger.info("request refused", extra={"conn": h.conn.id, "status": status, "error": "request body"})
            if tel is None or attrs is None:
                continue
            peers = h.peers
            if peers is None:
                peers = h.peers = peers_of(agent, h.conn, h.reporters)
            conn = h.conn
            trace = h.trace
            if trace[0] != conn.trace:
                trace = h.trace = (conn.trace, conn.trace_id)
            for direction, src, dst, service in peers:
                recs.append(record(start, end, node, src, dst, attrs.method, attrs.path, attrs.host, status,
                                   d.verdict, d.policy, trace[1], direction, conn.mode, req_bytes, resp_bytes,
                                   own_flags or flags, service))
        except Exception as e:  # noqa: BLE001 - this connection's exchange only; the caller ends it
            failed.append((cid, e))
    # a reused decision is counted as that many decisions (enforce.note with n), and the
    # batch's records go to telemetry together, in order: the same counts and records
    # as one call per exchange
    for h, d, attrs, n in reused.values():
        enforce.note(agent, h.conn, d, attrs, n)
        count("http_requests_allow", n)
    if recs:
        tel.submit_requests(recs)
    return failed


def on_refused(agent, h: L7Conn, status: int, reason: str, req_bytes: int, now: float) -> None:
    """hyper refused a head (it answered ``status``; the connection closed)."""
    agent.count(f"http_refused_{status}")
    logger.info("request refused", extra={"conn": h.conn.id, "status": status, "error": reason})
    h.peers = submit_requests(agent, h.conn, h.reporters, h.peers, now, now, NO_REQUEST, ALLOW, status,
                              req_bytes, 0, "DPE")
