"""HTTP routes and retries on the source side: carry out ``agent.traffic.http``'s answers.

A connection to a service whose VirtualService has ``http`` routes for the port is read
request by request with h11 (server role). Each request is matched to a route, sent to
an endpoint the planner picks (one upstream connection per attempt, a loopback leg into
the native core that carries it out as the planner's route says, so tunnels, policy and
telemetry apply to it: ``NativeEngine.open_leg``), and
its response streamed back. A response or failure ``retryOn`` names is retried on
another endpoint when ``retries.attempts`` and the retry budget allow; ``perTryTimeout``
and ``timeout`` bound the attempts. Request bodies are kept (up to ``MAX_RETRY_BODY``)
to be sent again. Decides nothing itself; an error ends this connection only.
"""

from __future__ import annotations

import logging
import socket
import time

import h11
import trio

from agent.proxy import aio, plan, traffic_path
from agent.proxy.conns import Conn
from agent.proxy.contain import publish

logger = logging.getLogger("hostmesh.http_route")
MAX_HEAD = 16 * 1024  # SPEC.md: request heads beyond 16 KiB are refused (431)
# Envoy buffers a request for retries up to its connection buffer limit (1 MiB).
MAX_RETRY_BODY = 1024 * 1024


class _Close(Exception):
    pass


def _reply(c: h11.Connection, status: int, text: str, flag: str | None = None) -> bytes:
    body = text.encode() + b"\n"
    hs = [("content-type", "text/plain"), ("content-length", str(len(body)))]
    if flag:
        hs.append(("x-envoy-response-flags", flag))
    return c.send(h11.Response(status_code=status, headers=hs)) + c.send(h11.Data(data=body)) + \
        c.send(h11.EndOfMessage())


async def serve_http_routes(agent, conn: Conn, sock: socket.socket, p: plan.HttpRouted) -> None:
    publish(conn)  # for contain's failure log
    conn.mode = "local" if conn.mode == "passthrough" else conn.mode
    agent.conns.add(conn)
    agent.count("traffic_http_connections")
    client = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    try:
        try:
            while True:
                req, body = await _read_request(client, sock)
                if req is None:
                    break
                await _one_request(agent, conn, sock, client, p, req, body)
                if client.our_state is h11.MUST_CLOSE or client.their_state is h11.MUST_CLOSE:
                    break
                client.start_next_cycle()
        finally:
            aio.close(sock)
    except (_Close, OSError, h11.ProtocolError, trio.TooSlowError):
        pass
    finally:
        agent.conns.pop(conn.id)


async def _read_request(client: h11.Connection, sock) -> tuple[h11.Request | None, bytes]:
    req, body = None, bytearray()
    while True:
        try:
            ev = client.next_event()
        except h11.RemoteProtocolError as e:
            await aio.send_all(sock, _reply(client, e.error_status_hint, f"bad request: {e}"))
            raise _Close() from None
        if ev is h11.NEED_DATA:
            data = await aio.recv_some(sock)
            client.receive_data(data)
            continue
        if isinstance(ev, h11.Request):
            req = ev
        elif isinstance(ev, h11.Data):
            body += ev.data
            if len(body) > MAX_RETRY_BODY:
                await aio.send_all(sock, _reply(client, 413, "request body too large for a retriable route"))
                raise _Close()
        elif isinstance(ev, h11.EndOfMessage):
            return req, bytes(body)
        elif isinstance(ev, h11.ConnectionClosed) or ev is h11.PAUSED:
            return None, b""


async def _one_request(agent, conn: Conn, sock, client: h11.Connection, p: plan.HttpRouted, req: h11.Request,
                       body: bytes) -> None:
    from agent.traffic.http import match_route, retriable
    from agent.traffic.model import Retries
    from agent.traffic.planner import weighted

    key = (p.service.namespace, p.service.name)
    vs = agent.traffic.virtual_service(key)
    headers = {k.decode().lower(): v.decode("latin-1") for k, v in req.headers}
    path = req.target.decode("latin-1").split("?", 1)[0]
    route = match_route(vs, req.method.decode(), path, headers, p.port) if vs is not None else None
    if route is None:
        agent.count("traffic_no_route")
        await aio.send_all(sock, _reply(client, 404, "no route", "NR"))
        return
    state = agent.health.traffic
    budget = state.budget(f"{vs.namespace}/{vs.name}")
    dest = weighted(route.route, agent.health.rng)
    retries = route.retries or Retries(attempts=0)
    tried: set[str] = set()
    budget.requests += 1
    retrying = False
    try:
        with trio.move_on_after(route.timeout_s or float("inf")) as overall:
            for n in range(1 + max(retries.attempts, 0)):
                if n:
                    if not budget.allow_retry():
                        agent.count("traffic_retry_budget_exhausted")
                        break
                    retrying = True
                    agent.count("traffic_retries")
                outcome, up = await _attempt(agent, conn, p, req, body, dest, tried, retries.per_try_timeout_s)
                if retrying:
                    budget.done_retry()
                    retrying = False
                last = n == retries.attempts
                if isinstance(outcome, h11.Response) and (last or not retriable(route.retries, outcome.status_code)):
                    await _stream_response(client, sock, outcome, up)
                    return
                if isinstance(outcome, h11.Response):
                    aio.close(up[0])  # a retriable status: drop the answer, try again
                    last_status = outcome.status_code
                else:
                    last_status = outcome
                    if not retriable(route.retries, outcome):
                        break
        if overall.cancelled_caught:
            agent.count("traffic_request_timeouts")
            await aio.send_all(sock, _reply(client, 504, "upstream request timeout", "UT"))
            return
    finally:
        budget.requests -= 1
        if retrying:
            budget.done_retry()
    agent.count("traffic_retries_exhausted")
    status = last_status if isinstance(last_status, int) else 503
    await aio.send_all(sock, _reply(client, status, f"upstream failed: {last_status}", "URX" if len(tried) > 1 else "UF"))


async def _attempt(agent, conn: Conn, p: plan.HttpRouted, req: h11.Request, body: bytes, dest, tried: set[str],
                   per_try_s: float | None):
    """One try: (h11.Response, (socket, h11 client)) or (failure name, None)."""
    from agent.traffic.planner import NoPick, plan_destination

    view = agent.view
    pick = plan_destination(view.traffic, view.by_key, dest, p.port, client_ns=p.src.namespace,
                            client_locality=view.locality.get(view.node_name, ("", "")),
                            meta=plan.endpoint_meta(view), state=agent.health.traffic, now=trio.current_time(),
                            rng=agent.health.rng, attempts=1, avoid=frozenset(tried))
    if isinstance(pick, NoPick):
        agent.count(f"traffic_{traffic_path.FLAG_REASONS.get(pick.flag, 'refused')}")
        return pick.flag, None
    route = plan.pick_routes(p.src, pick, view)[0]
    if isinstance(route, plan.Refuse):
        return route.reason, None
    tried.add(route.dst_ip)
    sub = Conn("outbound", route.kind, conn.src_ip, conn.src_port, route.dst_ip, route.dst_port, time.time(),
               trio.current_time(), src=conn.src, src_principal=conn.src_principal, dst=route.dst)
    if route.dst is not None:
        sub.dst_principal = route.dst.spiffe_id(agent.config.identity.trust_domain)
    outer = None
    with trio.move_on_after(per_try_s or float("inf")) as scope:
        try:
            # the core carries the leg out as a captured connection of the pod (the
            # engine counts the attempt for its cluster and endpoint, traffic_path)
            outer = await agent.engine.open_leg(sub, [route])
            up = h11.Connection(h11.CLIENT)
            hs = list(req.headers) if any(k.lower() == b"host" for k, _ in req.headers) else \
                [(b"host", p.service.vip.encode()), *req.headers]
            out = up.send(h11.Request(method=req.method, target=req.target, headers=hs))
            if body:
                out += up.send(h11.Data(data=body))
            await aio.send_all(outer, out + up.send(h11.EndOfMessage()))
            while True:
                ev = up.next_event()
                if ev is h11.NEED_DATA:
                    data = await aio.recv_some(outer)
                    if not data:
                        break
                    up.receive_data(data)
                    continue
                if isinstance(ev, h11.Response):
                    traffic_path.outcome(agent, route, ev.status_code)
                    return ev, (outer, up)
                if not isinstance(ev, h11.InformationalResponse):
                    break
        except (OSError, h11.ProtocolError):
            pass  # the leg was reset: why is on ``sub`` (refused by the engine) or it is a reset
    aio.close(outer)
    if scope.cancelled_caught:
        traffic_path.outcome(agent, route, "timeout")
        return "timeout", None
    if sub.verdict == "deny":  # the engine refused the leg: a policy, or every connect failed
        return "denied", None
    if sub.reason:
        return "connect-failure", None
    traffic_path.outcome(agent, route, "reset")
    return "reset", None


async def _stream_response(client: h11.Connection, sock, resp: h11.Response, up) -> None:
    outer, upc = up
    try:
        await aio.send_all(sock, client.send(h11.Response(status_code=resp.status_code, headers=resp.headers,
                                                          reason=resp.reason)))
        while True:
            ev = upc.next_event()
            if ev is h11.NEED_DATA:
                data = await aio.recv_some(outer)
                upc.receive_data(data)
                continue
            if isinstance(ev, h11.Data):
                await aio.send_all(sock, client.send(h11.Data(data=ev.data)))
            elif isinstance(ev, h11.EndOfMessage):
                await aio.send_all(sock, client.send(h11.EndOfMessage()))
                return
            else:
                raise _Close()
    finally:
        aio.close(outer)
