"""Pod interfaces that vanish: un-register their workloads (capture, identity, state).

The netlink side lives in ``agent.capture.routing watch`` (the one pyroute2 module),
run as a child process that prints a JSON line per vanished interface with the pod
addresses that were routed through it. This shell reads those lines and removes every
local workload that owned one of the addresses, exactly as ``DELETE /v1/workloads``
would: its nft set elements, its connections and, with its last pod, its identity.
A child that dies is restarted with capped backoff; the data path never waits on it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import trio

logger = logging.getLogger("hostmesh.capture")


def gone_workloads(registry, addresses) -> list[str]:
    """UIDs of local workloads that own any of ``addresses`` (pure)."""
    uids = []
    for ip in addresses:
        w = registry.by_ip(ip)
        if w is not None and w.node is None and w.uid not in uids:
            uids.append(w.uid)
    return uids


async def watch_links(agent, task_status=trio.TASK_STATUS_IGNORED) -> None:
    backoff = 0.5
    started = False
    while True:
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "agent.capture.routing", "watch"],
                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
            try:
                buf = b""
                async for chunk in proc.stdout:
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        ev = json.loads(line)
                        if ev.get("ready"):
                            backoff = 0.5
                            if not started:
                                started = True
                                task_status.started()
                            continue
                        _handle(agent, ev)
                rc = await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    with trio.CancelScope(shield=True):
                        await proc.wait()
            logger.warning("link watcher exited (%s); restarting in %.1f s", rc, backoff)
        except (OSError, ValueError) as e:
            logger.warning("link watcher failed: %s; restarting in %.1f s", e, backoff)
        if not started:  # never hold up the agent's start for it
            started = True
            task_status.started()
        await trio.sleep(backoff)
        backoff = min(backoff * 2, 30.0)


def _handle(agent, ev: dict) -> None:
    for uid in gone_workloads(agent.registry, ev.get("gone", ())):
        w = agent.unregister(uid)
        agent.count("workloads_removed_link_gone")
        logger.warning("pod interface %s disappeared: workload %s/%s (%s) removed",
                       ev.get("ifname"), w.namespace if w else "?", w.name if w else "?", uid)
