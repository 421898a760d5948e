"""The three data-plane listeners (SPEC.md ports table), handed to the native core.

:15001 outbound capture and :15006 inbound plaintext capture listen on loopback (TPROXY
delivers there), :15008 on the node address — the only port other hosts reach — and on
loopback too: capture delivers HBONE to a local pod's :15008 there (docs/capture.md). All
are IP_TRANSPARENT with SO_REUSEPORT so a replacement agent can listen beside a
draining one. Python creates them and the core accepts on duplicates; accepting stops
when the ``listeners`` scope is cancelled (drain); established connections live on in
the core.
"""

from __future__ import annotations

import errno
import logging
import socket

import trio

from agent.proxy.sockets import make_listener

logger = logging.getLogger("hostmesh.listeners")


def _addresses(agent) -> list[tuple[str, int, str]]:
    cfg = agent.config
    p = cfg.ports
    out = [
        ("127.0.0.1", p.outbound, "outbound"),
        ("127.0.0.1", p.inbound_plain, "plaintext"),
        (cfg.node.address, p.tunnel, "tunnel"),
    ]
    if socket.has_ipv6 and cfg.capture.enabled:
        out += [("::1", p.outbound, "outbound"), ("::1", p.inbound_plain, "plaintext")]
    if cfg.node.address6:
        out.append((cfg.node.address6, p.tunnel, "tunnel"))
    if cfg.capture.enabled:
        # the pod-address tunnel listener: capture TPROXYs a local pod's :15008 (HBONE)
        # here; the core presents that pod's certificate
        loops = ["127.0.0.1"] + (["::1"] if socket.has_ipv6 else [])
        out += [(a, p.tunnel, "tunnel") for a in loops if a not in (cfg.node.address, cfg.node.address6)]
    return out


async def serve_dataplane(agent, listeners: trio.CancelScope, task_status=trio.TASK_STATUS_IGNORED) -> None:
    socks = []
    try:
        for host, port, kind in _addresses(agent):
            try:
                socks.append((make_listener(host, port), kind))
            except OSError as e:
                if e.errno == errno.EADDRNOTAVAIL and ":" in host:
                    logger.warning("no IPv6 on %s; skipping listener", host)
                    continue
                raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
        agent.listen_ports = sorted({s.getsockname()[1] for s, _ in socks})
        await _serve_native(agent, socks, listeners, task_status)
    finally:
        for s, _ in socks:
            s.close()


async def _serve_native(agent, socks, listeners: trio.CancelScope, task_status) -> None:
    """The native core accepts on duplicates of the listeners; ours close at once. On
    drain the core takes what sits in the backlogs, then closes its listeners."""
    from agent.proxy.native import open_native

    async with open_native(agent, socks) as engine:
        for s, _ in socks:
            s.close()
        agent.engine = engine
        with listeners:
            task_status.started()
            await trio.sleep_forever()
        engine.core.stop_accepting()
        await trio.sleep_forever()
