"""The agent's task tree: one root nursery, services started in order with
``nursery.start`` so that readiness means "everything below me is listening".

Order: telemetry, capture, identities, the socket layer, the three data-plane
listeners, the admin socket, then metrics and readiness. SIGTERM drains (readiness
503, stop accepting, connections get until ``drain.deadline_s``, then close); SIGHUP
reloads. Optional parts whose module is absent or not configured are skipped with a log
line, never silently.
"""

from __future__ import annotations

import logging
import signal

import trio

from agent.app import Agent
from agent.config import Config
from agent.state.workloads import WorkloadError, workload_from_json

logger = logging.getLogger("hostmesh.serve")
# How long start-up waits for the CA service's first SVIDs before listening anyway (the
# lab's CA answers in ~20 ms; a drain's accept grace is longer than this).
FIRST_SVIDS_BEFORE_LISTEN_S = 5.0


async def run_agent(config: Config, config_path: str | None = None) -> int:
    """The agent: one process; the native core's ``dataplane.threads`` use the cores
    (decisions/0003)."""
    agent = Agent(config, config_path)
    agent.drain_requested = trio.Event()
    async with trio.open_nursery() as root:
        await root.start(_signals, agent)
        await _start_telemetry(agent, root)
        discovery = await _start_node(agent, root)
        await _start_identities(agent, root)
        await _load_state(agent, root, discovery)
        from agent.proxy.listeners import serve_dataplane

        if agent.identities is not None and agent.identities.ca_client is not None:
            # listen once the local identities have their SVIDs: a replacement's listener
            # shares the ports with the draining agent (SO_REUSEPORT), and a connection
            # the kernel gives it before the CA answered could not be tunnelled. Bounded:
            # with the CA down the agent still listens (local traffic needs no SVID).
            with trio.move_on_after(FIRST_SVIDS_BEFORE_LISTEN_S):
                await agent.identities.wait_first_certificates()

        listeners = trio.CancelScope()
        await root.start(serve_dataplane, agent, listeners)
        await _start_admin(agent, root)
        await _start_http(agent, root)
        if agent.identities is not None and agent.identities.ca_client is not None:  # ready once the CA answered
            await agent.identities.wait_first_certificates()
        agent.ready = True
        if agent.is_ready():
            logger.info("ready", extra={"node": config.node.name, "workloads": len(agent.registry)})
        else:
            logger.error("started but NOT ready: %s", agent.not_ready_reason(), extra={"node": config.node.name})
        await agent.drain_requested.wait()
        await _drain(agent, listeners)
        root.cancel_scope.cancel()
    logger.info("stopped")
    return 0


async def _signals(agent: Agent, task_status=trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
        task_status.started()
        async for s in sigs:
            if s == signal.SIGHUP:
                try:
                    result = await agent.reload()
                    logger.info("reloaded", extra=result)
                except Exception as e:  # an invalid file keeps what is in force
                    logger.error("reload failed: %s", e)
            else:
                logger.info("draining", extra={"signal": signal.Signals(s).name})
                agent.draining = True
                agent.drain_requested.set()


async def _drain(agent: Agent, listeners: trio.CancelScope) -> None:
    """Stop accepting, give connections until the deadline, then close them (ztunnel's drain)."""
    from agent.drain import listening_inodes, read_proc_tcp, replacement_present

    agent.draining = True
    deadline = agent.config.drain.deadline_s
    before = listening_inodes(read_proc_tcp(), agent.listen_ports)
    with trio.move_on_after(min(agent.config.drain.accept_grace_s, deadline)):
        while not replacement_present(read_proc_tcp(), before):
            await trio.sleep(0.05)
        logger.info("a replacement agent is listening; handing new connections over")
    listeners.cancel()
    with trio.move_on_after(deadline):
        while len(agent.conns):
            await trio.sleep(0.05)
    left = len(agent.conns)
    if left:
        logger.warning("drain deadline reached; closing connections", extra={"open": left})
        for c in list(agent.conns):
            agent.close_connection(c.id, "drain_deadline")
        await trio.sleep(0.1)


async def _start_telemetry(agent: Agent, nursery: trio.Nursery) -> None:
    try:
        from agent.telemetry.pipeline import Telemetry, label_context
    except ImportError:
        logger.warning("telemetry module not available; records are not exported")
        return
    from agent.proxy.finish import flow

    agent.telemetry = Telemetry(agent.config.telemetry, agent.config.node.name, label_context(agent.config))
    agent.telemetry.tick_hooks.append(lambda: flow(agent))
    await nursery.start(agent.telemetry.run)


async def _start_node(agent: Agent, nursery: trio.Nursery):
    """The node-wide part: Kubernetes discovery's first list, the capture rules, the
    link watcher. Returns the discovery to run once state is in."""
    discovery = await _start_discovery(agent, nursery)
    await trio.to_thread.run_sync(_start_capture, agent)
    if agent.capture is not None and agent.config.capture.watch_links:
        from agent.capture.links import watch_links

        await nursery.start(watch_links, agent)
    return discovery


async def _load_state(agent: Agent, nursery: trio.Nursery, discovery) -> None:
    """The config's workloads, the API-registered workloads, the policy directory and
    the API-applied policies (agent.policy_sources), then what Kubernetes lists; then
    capture drops the pods a predecessor enrolled that none of these know."""
    _load_static_state(agent)
    await agent.policy_sources.load_at_start()
    if discovery is not None:
        from agent.k8s.discovery import run as run_discovery

        await run_discovery(discovery, nursery)
    _settle_capture(agent)


async def _start_discovery(agent: Agent, nursery: trio.Nursery):
    """Kubernetes discovery's first list, before capture (it learns this node's pod
    CIDRs); the watches start once identities and static state are in."""
    if not agent.config.kubernetes.enabled:
        return None
    from agent.k8s.discovery import start

    return await start(agent, nursery)


def _enable_request_migration() -> None:
    from agent.drain import enable_request_migration

    why = enable_request_migration()
    if why:
        logger.warning("%s: connections queued on this agent's listeners when it hands over to a "
                       "replacement will be reset; set it to 1 (sysctl)", why)


def _start_capture(agent: Agent) -> None:
    """Capture rules installed, keeping the pods a predecessor enrolled (``_settle_capture``
    drops the ones this agent does not know once its state is loaded)."""
    _enable_request_migration()
    cfg = agent.config
    if not cfg.capture.enabled:
        logger.info("capture disabled by configuration")
        return
    from agent.capture import Capture

    agent.capture = Capture(cfg.capture, cfg.ports, cfg.cluster.pod_cidrs)
    agent.capture.install(adopt=True)


def _settle_capture(agent: Agent) -> None:
    if agent.capture is None:
        return
    gone = agent.capture.settle([ip for w in agent.registry.local() for ip in w.ips])
    if gone:
        logger.info("un-enrolled pods the previous agent had and this one does not", extra={"ips": gone})


async def _start_identities(agent: Agent, nursery: trio.Nursery) -> None:
    cfg = agent.config.identity
    if not (cfg.ca_cert or cfg.cert_dir or cfg.ca_address):
        logger.warning("no CA and no certificate directory configured: tunnels are unavailable")
        return
    from agent.identity.manager import IdentityManager

    agent.identities = IdentityManager(cfg, agent.config.node.name)
    await nursery.start(agent.identities.run)


def _load_static_state(agent: Agent) -> None:
    cfg = agent.config
    for wc in cfg.workloads:
        try:
            w = workload_from_json(wc.to_dict(exclude_none=True), local_node=cfg.node.name)
            agent.register(w)
            agent.config_uids.add(w.uid)
        except WorkloadError as e:
            logger.error("workload %s: %s", wc.uid, e)
    agent.load_api_workloads()


async def _start_admin(agent: Agent, nursery: trio.Nursery) -> None:
    try:
        from agent.admin.server import serve_admin
    except ImportError:
        logger.warning("admin module not available")
        return
    await nursery.start(serve_admin, agent, agent.config.admin)


async def _start_http(agent: Agent, nursery: trio.Nursery) -> None:
    from agent.readiness import serve_metrics, serve_readiness

    await nursery.start(serve_readiness, agent)
    await nursery.start(serve_metrics, agent)
