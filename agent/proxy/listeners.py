"""The three data-plane listeners and their accept loops (SPEC.md ports table).

:15001 outbound capture and :15006 inbound plaintext capture listen on loopback (TPROXY
delivers there), :15008 on the node address — the only port other hosts reach — and,
with the native engine, on loopback too: capture delivers HBONE to a local pod's :15008
there (docs/capture.md). All are IP_TRANSPARENT with SO_REUSEPORT so a replacement
agent can listen beside a draining one. Accepting stops when the ``listeners`` scope is cancelled (drain); the
handlers' connections live on in the socket layer.
"""

from __future__ import annotations

import errno
import logging
import socket
from functools import partial

import trio

from agent.proxy.contain import contained
from agent.proxy.engines import open_socket_layer
from agent.proxy.handoff import on_engine_finished
from agent.proxy.inbound import handle_plaintext, handle_tunnel
from agent.proxy.outbound import handle_outbound
from agent.proxy.sockets import make_listener
from agent.proxy.tunnel_client import TunnelPool

logger = logging.getLogger("hostmesh.listeners")

# Accepts served per wake-up before yielding to other tasks: keeps a SYN flood on one
# listener from starving the others.
ACCEPT_BATCH = 64


def _addresses(agent) -> list[tuple[str, int, object]]:
    cfg = agent.config
    p = cfg.ports
    out = [
        ("127.0.0.1", p.outbound, handle_outbound),
        ("127.0.0.1", p.inbound_plain, handle_plaintext),
        (cfg.node.address, p.tunnel, handle_tunnel),
    ]
    if socket.has_ipv6 and cfg.capture.enabled:
        out += [("::1", p.outbound, handle_outbound), ("::1", p.inbound_plain, handle_plaintext)]
    if cfg.node.address6:
        out.append((cfg.node.address6, p.tunnel, handle_tunnel))
    if cfg.dataplane.engine == "native" and cfg.capture.enabled:
        # the pod-address tunnel listener: capture TPROXYs a local pod's :15008 (HBONE)
        # here; the core presents that pod's certificate. The Python engines have none
        # (they speak only HTTP/1.1 CONNECT on the node address): with them the capture
        # rule finds no listener and the fail mode answers.
        loops = ["127.0.0.1"] + (["::1"] if socket.has_ipv6 else [])
        out += [(a, p.tunnel, handle_tunnel) for a in loops if a not in (cfg.node.address, cfg.node.address6)]
    return out


async def serve_dataplane(agent, listeners: trio.CancelScope, task_status=trio.TASK_STATUS_IGNORED) -> None:
    socks = []
    try:
        for host, port, handler in _addresses(agent):
            try:
                socks.append((make_listener(host, port), handler))
            except OSError as e:
                if e.errno == errno.EADDRNOTAVAIL and ":" in host:
                    logger.warning("no IPv6 on %s; skipping listener", host)
                    continue
                raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
        agent.listen_ports = sorted({s.getsockname()[1] for s, _ in socks})
        if agent.config.dataplane.engine == "native":
            await _serve_native(agent, socks, listeners, task_status)
            return
        async with trio.open_nursery() as nursery, open_socket_layer(
            agent.config.dataplane, partial(on_engine_finished, agent)
        ) as engine:
            agent.engine = engine
            agent.tunnels = TunnelPool(agent, nursery)
            nursery.start_soon(agent.tunnels.expire)
            with listeners:
                async with trio.open_nursery() as accepts:
                    for s, handler in socks:
                        await accepts.start(_accept_loop, agent, s, handler, nursery)
                    task_status.started()
            # drained: take what already sits in the backlogs (closing a listener resets
            # those), then close so a replacement agent gets every new connection;
            # established connections live on in the socket layer until the deadline.
            for s, handler in socks:
                _sweep(agent, s, handler, nursery)
                s.close()
            agent.tunnels.close()
            await trio.sleep_forever()
    finally:
        for s, _ in socks:
            s.close()


_KINDS = {handle_outbound: "outbound", handle_plaintext: "plaintext", handle_tunnel: "tunnel"}


async def _serve_native(agent, socks, listeners: trio.CancelScope, task_status) -> None:
    """The native core accepts on duplicates of the listeners; ours close at once. On
    drain the core takes what sits in the backlogs, then closes its listeners."""
    from agent.proxy.native import open_native

    async with open_native(agent, [(s, _KINDS[h]) for s, h in socks]) as engine:
        for s, _ in socks:
            s.close()
        agent.engine = engine
        with listeners:
            task_status.started()
            await trio.sleep_forever()
        engine.core.stop_accepting()
        await trio.sleep_forever()


async def _accept_loop(agent, lsock: socket.socket, handler, nursery: trio.Nursery,
                       task_status=trio.TASK_STATUS_IGNORED) -> None:
    lsock.setblocking(False)
    task_status.started()
    while True:
        await trio.lowlevel.wait_readable(lsock)
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _addr = lsock.accept()
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    agent.count("accept_resource_errors")
                    logger.error("accept: %s; pausing", e.strerror)
                    await trio.sleep(0.1)
                    break
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # contained: an error of one connection ends that connection, never this loop
            nursery.start_soon(contained, agent, sock, handler, agent, sock)
        await trio.lowlevel.checkpoint()


def _sweep(agent, lsock: socket.socket, handler, nursery: trio.Nursery) -> None:
    while True:
        try:
            sock, _addr = lsock.accept()
        except OSError:
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        nursery.start_soon(contained, agent, sock, handler, agent, sock)
