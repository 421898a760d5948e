"""The socket layer a worker runs, chosen by ``dataplane.engine``.

``epoll`` is the batched engine (agent.proxy.engine); ``trio`` wraps the plain trio
relay (agent.proxy.relay_trio) in the same interface — the portable fallback and the
benchmark reference. Both report finished connections through ``on_finished`` in the
trio thread and close a connection on request.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

logger = logging.getLogger("hostmesh.engine")


class TrioRelayEngine:
    """One trio task per connection running ``relay_trio.relay``."""

    def __init__(self, nursery: trio.Nursery, config: Any) -> None:
        self._nursery = nursery
        self._config = config
        self._scopes: dict[int, trio.CancelScope] = {}
        self._reasons: dict[int, str] = {}
        self.on_finished: Callable[[Any], None] = lambda fc: None

    def add(self, a, b, *, to_a: bytes = b"", to_b: bytes = b"", conn_id: int, tag: str = "",
            a_framing=None, b_framing=None) -> None:
        if a_framing is not None or b_framing is not None:  # never offered with this engine (serve.py)
            raise ValueError("the trio relay does not carry reusable tunnel streams")
        self._nursery.start_soon(self._run, a, b, to_a, to_b, conn_id, tag)

    async def _run(self, a, b, to_a, to_b, conn_id, tag) -> None:
        from agent.proxy.relay_trio import relay

        failed = False
        with trio.CancelScope() as scope:
            self._scopes[conn_id] = scope
            try:
                fc = await relay(
                    a, b, to_a=to_a, to_b=to_b, conn_id=conn_id, tag=tag,
                    buffer_bytes=self._config.buffer_bytes, idle_timeout_s=self._config.idle_timeout_s,
                )
            except Exception as e:  # contained: this connection ends, never the relay's nursery
                from agent.proxy.contain import reason_of

                logger.error("relay failed", extra={"conn": conn_id, "reason": reason_of(e)}, exc_info=e)
                self._reasons[conn_id] = f"error: {reason_of(e)}"
                failed = True
            finally:
                self._scopes.pop(conn_id, None)
        if scope.cancelled_caught or failed:
            import time

            from agent.proxy.engine import FinishedConn
            from agent.proxy.sockets import set_reset_on_close

            fc = FinishedConn(conn_id, tag, 0, 0, time.time(), time.time(), self._reasons.pop(conn_id, "closed"))
            for s in (a, b):
                set_reset_on_close(s)
                try:
                    s.close()
                except OSError:
                    pass
        self.on_finished(fc)

    def close(self, conn_id: int, reason: str) -> None:
        scope = self._scopes.get(conn_id)
        if scope is not None:
            self._reasons[conn_id] = reason
            scope.cancel()

    def snapshot(self) -> list:
        return []

    def statistics(self) -> dict:
        return {"engine": "trio", "connections": len(self._scopes)}


@asynccontextmanager
async def open_socket_layer(config: Any, on_finished: Callable[[Any], None]) -> AsyncIterator[Any]:
    if config.engine == "trio":
        async with trio.open_nursery() as nursery:
            eng = TrioRelayEngine(nursery, config)
            eng.on_finished = on_finished
            try:
                yield eng
            finally:
                nursery.cancel_scope.cancel()
        return
    from agent.proxy.engine import open_engine

    async with open_engine(config) as eng:
        eng.on_finished = on_finished
        yield eng
