"""The native engine's paths through Python's HTTP code: connections the core serves
as HTTP itself and asks about per request (per-request rules, or HTTP metrics:
``dataplane.l7: core``, l7core.py), those it pipes to the HTTP request router
(VirtualService ``http`` routes) or to the h11 inspector (``dataplane.l7: python``, and
the source's view of a tunnelled HTTP port), and the loopback **legs** by which that
code sends a request on through the core.

A leg is a TCP connection from the agent to a private listener of the core (127.0.0.1,
an ephemeral port), registered by its source port with the routes to carry out before
it connects; the core reports it as an outbound connection and ``NativeEngine`` carries
it out as a captured connection of the pod would be (tunnel, local with policy, or
passthrough; traffic accounting and the record apply). This module decides nothing: the
planner chose the routes; it never blocks the trio thread.
"""

from __future__ import annotations

import logging
import os
import socket

import trio

from agent.proxy import plan
from agent.proxy.conns import Conn
from agent.proxy.finish import finish, opened

logger = logging.getLogger("hostmesh.native")

# The core's events that only report (records and counts), taken at shutdown.
_RECORDS = frozenset({"exchanges", "finished", "http_refused", "progress"})


class HttpPaths:
    """Mixed into ``NativeEngine`` (its ``core``, ``agent``, ``_nursery``, ``_pending``,
    ``_legs``, ``_leg_addr``, ``_try_next`` and ``_refuse``)."""

    _l7_on_exchanges = None  # l7core.on_exchanges, imported on the first batch

    def _http_routed(self, cid: int, conn: Conn, p: plan.HttpRouted) -> None:
        """A service with HTTP routes: the core pipes the pod's bytes to the request
        router (http_route), whose upstream attempts come back as legs (open_leg)."""
        from agent.proxy.contain import contained
        from agent.proxy.http_route import serve_http_routes

        sock = self._piped(cid)
        if sock is not None:  # contained: an error ends this connection, never the event loop
            self._nursery.start_soon(contained, self.agent, sock, serve_http_routes, self.agent, conn, sock, p)

    def _report_source(self, cid: int, st) -> None:
        """The source's view of HTTP requests to a workload's HTTP port (``http_metrics:
        both``): the core pipes the pod's bytes to the inspector, which sends them on
        through a leg carrying out the rest of the plan (the tunnel, then the next
        routes); the leg's record is the connection's."""
        from agent.proxy.contain import contained

        a = self._piped(cid)
        if a is not None:
            self._nursery.start_soon(contained, self.agent, a, self._source_inspect, st.conn, a, st.plans[st.next - 1:])

    def _piped(self, cid: int) -> socket.socket | None:
        """The core bridges the pod's connection to a socket pair: Python's end, or None
        when the client gave up meanwhile."""
        self._pending.pop(cid, None)
        fd = self.core.pipe(cid)
        if fd is None:
            return None
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        return sock

    async def _source_inspect(self, conn: Conn, a: socket.socket, plans: list) -> None:
        from agent.proxy.l7 import relay_http

        try:
            b = await self.open_leg(conn, plans)
            try:
                await relay_http(self.agent, conn, a, b, police=False, reporters=["outbound"])
            finally:
                b.close()
        finally:
            a.close()

    async def open_leg(self, sub: Conn, plans: list) -> socket.socket:
        """A loopback connection into the core that it carries out as ``plans`` say (the
        routes in order), as a captured connection of ``sub``'s pod (tunnel, local or
        passthrough; policy and traffic counting apply). Refused, it is reset;
        ``sub.reason`` says why."""
        if self._leg_addr is None:
            raise OSError("the core's leg listener is not running")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setblocking(False)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            self._legs[port] = (sub, list(plans))
            try:
                s.connect(self._leg_addr)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(s)
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err)) from None
        except BaseException:
            self._legs.pop(s.getsockname()[1] if s.fileno() >= 0 else 0, None)
            s.close()
            raise
        return s

    def _leg(self, cid: int, src) -> None:
        entry = self._legs.pop(src[1], None) if src[0] == "127.0.0.1" else None
        if entry is None:
            self.core.refuse(cid, "unknown_leg", 503)
            return
        from agent.proxy.native import _Pending

        sub, plans = entry
        self._pending[cid] = _Pending(sub, plans, leg=True)
        self._try_next(cid)

    def _to_http(self, cid: int, conn: Conn, upstream, bind, answer: str | bool, police: bool,
                 reporters: list[str]) -> None:
        """Per-request rules (``police``) or HTTP metrics (``reporters``) at the
        destination: the core connects the upstream and serves the connection as HTTP,
        one ("request", ...) event per head (``dataplane.l7: core``); or the h11
        inspector does (``python``)."""
        if self.agent.config.dataplane.l7 == "python":
            return self._to_inspector(cid, conn, upstream, bind, answer, police, reporters)
        from agent.proxy.l7core import L7Conn
        from agent.proxy.native import _Pending

        self._pending.setdefault(cid, _Pending(conn))
        self._established(cid, conn)
        self._http[cid] = L7Conn(conn, police, reporters)
        self.core.http(cid, upstream[0], upstream[1], bind)

    def _observe_in_core(self, cid: int, conn: Conn) -> bool:
        """The source's view of a workload's HTTP port (``http_metrics: both``) in the
        core (``dataplane.l7: core``): the tunnel about to be opened is served as HTTP,
        every head allowed as it comes and each exchange recorded. False: the h11
        inspector's way (``_report_source``)."""
        if self.agent.config.dataplane.l7 == "python":
            return False
        from agent.proxy.l7core import L7Conn

        self._http[cid] = L7Conn(conn, False, ["outbound"], told=True)
        self.core.http_mark(cid)
        return True

    def _unobserve(self, cid: int) -> None:
        self._http.pop(cid, None)
        self.core.http_unmark(cid)

    def _on_request(self, cid: int, rid: int, method: str, target: str, version: str, headers) -> None:
        from agent.proxy.l7core import on_request

        h = self._http.get(cid)
        if h is None:  # not an L7 connection of this engine's (cannot happen): refuse the head
            self.core.http_answer(cid, rid, "bad", 503, b"no decision for this connection\n")
            return
        try:
            on_request(self.agent, self.core, cid, h, rid, method, target, version, headers)
        except Exception:  # this request's connection ends (503), nothing else; run() logs it
            self.core.http_answer(cid, rid, "bad", 503, b"internal error\n")
            raise

    def _on_exchanges(self, evs: list) -> None:
        """A batch of finished exchanges (the core hands them over together:
        limits.rs EXCHANGE_DELAY): their records (l7core.on_exchanges). One that fails
        ends its connection only, as any event's error does."""
        on_exchanges = self._l7_on_exchanges
        if on_exchanges is None:
            from agent.proxy.l7core import on_exchanges

            self._l7_on_exchanges = on_exchanges
        for cid, e in on_exchanges(self.agent, self._http, evs):
            logger.error("native event exchange failed", exc_info=e)
            self.core.refuse(cid, "internal_error", 503)

    def take_records(self) -> None:
        """At shutdown, before the core stops: the records it still holds (an exchange's
        waits up to limits.rs EXCHANGE_DELAY for a wake-up), so none is lost. Decisions
        still asked for are not made: shutdown resets those connections."""
        while evs := self.core.events():
            for ev in evs:
                if ev[0] in _RECORDS:
                    try:
                        getattr(self, "_on_" + ev[0])(*ev[1:])
                    except Exception:  # noqa: BLE001 - the others are still recorded
                        logger.exception("native event %s failed at shutdown", ev[0])

    def _follow_policies(self, follow: bool = True) -> None:
        """The core reuses L7 answers only under the policy generation they were decided
        in: it is told the generation now and after every swap (l7core memos)."""
        store = self.agent.policies
        if follow:
            self._swap_hook = self.core.http_generation
            self._swap_hook(store.generation)
            store.on_swap.append(self._swap_hook)
        elif getattr(self, "_swap_hook", None) in store.on_swap:
            store.on_swap.remove(self._swap_hook)

    def _on_http_refused(self, cid: int, status: int, reason: str, req_bytes: int) -> None:
        import time

        from agent.proxy.l7core import on_refused

        h = self._http.get(cid)
        if h is not None:
            on_refused(self.agent, h, status, reason, req_bytes, time.time())

    def _to_inspector(self, cid: int, conn: Conn, upstream, bind, answer: str | bool, police: bool,
                      reporters: list[str]) -> None:
        """Per-request rules (``police``) or HTTP metrics (``reporters``): connect the
        upstream here, then have the core pipe the client's bytes (TLS already off) to
        the h11 inspector. ``answer``: the tunnel protocol whose failure status to answer
        with (False: a captured connection)."""
        from agent.proxy.contain import contained
        from agent.proxy.native import _Pending

        self._pending.setdefault(cid, _Pending(conn))

        # contained: an error of this connection ends it, never the core's event loop
        self._nursery.start_soon(contained, self.agent, None, self._inspect, cid, conn, tuple(upstream), bind, answer,
                                 police, reporters)

    async def _inspect(self, cid: int, conn: Conn, upstream, bind, answer: str | bool, police: bool,
                       reporters: list[str]) -> None:
        from agent.proxy.l7 import relay_http
        from agent.proxy.sockets import connect

        agent = self.agent
        self._pending.pop(cid, None)
        try:
            b = await connect(upstream, bind_src=bind, timeout=agent.config.dataplane.connect_timeout_s)
        except (OSError, trio.TooSlowError) as e:
            conn.reason = f"upstream_failed: {e}"
            if answer == "hbone":  # HBONE: an upstream that refused is 503 (ztunnel's)
                self.core.refuse(cid, conn.reason, 503)
            elif answer:
                self.core.refuse(cid, conn.reason, 504 if isinstance(e, trio.TooSlowError) else 502)
            else:
                self._refuse(cid, conn)
            return
        fd = self.core.pipe(cid)
        if fd is None:  # the client gave up meanwhile
            b.close()
            return
        a = socket.socket(fileno=fd)
        a.setblocking(False)
        agent.conns.add(conn)
        agent.count("connections_established")
        opened(agent, conn)
        try:
            sent, received, reason = await relay_http(agent, conn, a, b, police=police, reporters=reporters)
        finally:
            a.close()
            b.close()
        finish(agent, conn, sent, received, reason)
