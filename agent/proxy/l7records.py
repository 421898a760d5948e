"""One ``RequestRecord`` per reporting side for each finished HTTP exchange on an L7
port, whichever path served it (the core's hyper path or the h11 inspector): the
metrics, the access log and the spans read these. Decides nothing about the request;
must never block (``telemetry.submit`` queues).
"""

from __future__ import annotations

from functools import cache


@cache
def record_type():
    """The record class, imported once (an import statement per exchange costs ~0.8 us)."""
    from agent.telemetry.record import RequestRecord

    return RequestRecord


def peers_of(agent, conn, reporters) -> tuple:
    """What every record of the connection shares, computed once per connection:
    (direction, source end, destination end, service) for each of ``reporters``
    ("outbound": the source's view, "inbound": the destination's)."""
    from agent.proxy.finish import endpoint, service_of

    src = endpoint(conn.src_ip, conn.src_port, conn.src, conn.src_principal)
    dst = endpoint(conn.dst_ip, conn.dst_port, conn.dst, conn.dst_principal)
    return tuple((r, src, dst, service_of(agent, conn, r)) for r in reporters)


def submit_requests(agent, conn, reporters, peers, start: float, end: float, attrs, d, status: int,
                    req_bytes: int, resp_bytes: int, flags: str):
    """Submit the exchange for each of ``reporters``; returns ``peers`` (``peers_of``,
    computed on the first record: pass the returned value back in). The core's
    exchanges take l7core.on_exchanges' loop, which makes the same records."""
    tel = agent.telemetry
    if tel is None or not reporters or attrs is None:
        return peers
    if peers is None:
        peers = peers_of(agent, conn, reporters)
    record, node = record_type(), agent.config.node.name
    for direction, src, dst, service in peers:
        tel.submit(record(start, end, node, src, dst, attrs.method, attrs.path, attrs.host, status, d.verdict,
                          d.policy, conn.trace_id, direction, conn.mode, req_bytes, resp_bytes, flags, service))
    return peers
