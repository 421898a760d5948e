"""One ``RequestRecord`` per reporting side for each finished HTTP exchange on an L7
port, whichever path served it (the core's hyper path or the h11 inspector): the
metrics, the access log and the spans read these. Decides nothing about the request;
must never block (``telemetry.submit`` queues).
"""

from __future__ import annotations

from functools import cache


@cache
def _record_type():
    """The record class, imported once (an import statement per exchange costs ~0.8 us)."""
    from agent.telemetry.record import RequestRecord

    return RequestRecord


def submit_requests(agent, conn, reporters, peers, start: float, end: float, attrs, d, status: int,
                    req_bytes: int, resp_bytes: int, flags: str):
    """Submit the exchange for each of ``reporters`` ("outbound": the source's view,
    "inbound": the destination's); returns ``peers`` (the connection's ends and services,
    computed once per connection: pass the returned value back in)."""
    tel = agent.telemetry
    if tel is None or not reporters or attrs is None:
        return peers
    record = _record_type()
    if peers is None:
        from agent.proxy.finish import endpoint, service_of

        peers = (endpoint(conn.src_ip, conn.src_port, conn.src, conn.src_principal),
                 endpoint(conn.dst_ip, conn.dst_port, conn.dst, conn.dst_principal),
                 {r: service_of(agent, conn, r) for r in reporters})
    src, dst, services = peers
    for direction in reporters:
        tel.submit(record(start, end, agent.config.node.name, src, dst, attrs.method, attrs.path,
                                 attrs.host, status, d.verdict, d.policy, conn.trace_id, direction, conn.mode,
                                 req_bytes, resp_bytes, flags, services[direction]))
    return peers
