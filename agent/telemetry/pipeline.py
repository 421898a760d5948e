"""The path from the data plane to the sinks; it never blocks traffic.

``opened`` / ``flow`` move the TCP counters while a connection lives (agent.telemetry.
account); ``submit`` (trio thread) closes its account or counts an HTTP exchange, and
appends the record to a bounded queue — when full the record is dropped and counted. ``run`` flushes the queue in batches (size or
age, ``batcher``) to the access log and, when configured, to Kafka and OTLP, which run
behind their own bounded hand-offs. Delivered and dropped counts are exact per sink.
"""

from __future__ import annotations

import collections
import logging
import sys

import trio

from agent import __version__
from agent.telemetry import account
from agent.telemetry.istio import LabelContext, TcpAccount
from agent.telemetry.metrics import Metrics

logger = logging.getLogger("hostmesh.telemetry")


def label_context(config) -> LabelContext:
    """The cluster's name and every node's locality, from the agent's configuration."""
    nodes = [config.node, *config.cluster.nodes]
    return LabelContext(cluster=config.cluster.name, local_node=config.node.name,
                        localities={n.name: loc for n in nodes if (loc := _locality(n))})


def _locality(node) -> tuple[str, str] | None:
    """(region, zone) of a node: its region/zone settings, else its Kubernetes topology
    labels (the ones locality load balancing reads, docs/traffic.md)."""
    labels = getattr(node, "labels", None) or {}
    region = node.region or labels.get("topology.kubernetes.io/region")
    zone = node.zone or labels.get("topology.kubernetes.io/zone")
    return (region or "unknown", zone or "unknown") if region or zone else None


class Telemetry:
    def __init__(self, config, node: str, ctx: LabelContext | None = None) -> None:
        self.config = config
        self.node = node
        self.ctx = ctx or LabelContext(local_node=node)
        self.metrics = Metrics(config.max_series)
        # istio_build: the dashboards' version panels; hostmesh stands in ztunnel's place
        self.metrics.set_gauge("istio_build", (config.build_component, __version__), 1)
        self.tick_hooks: list = []  # called every flush (live connections' bytes)
        self.queue: collections.deque = collections.deque()
        self.counts = {"submitted": 0, "dropped_queue_full": 0, "access_log": 0}
        self.sinks: list = []
        self._wake = trio.Event()
        self._log = None

    def opened(self, rec) -> TcpAccount:
        """A connection got through to its upstream: counted as opened now."""
        return account.opened(self.metrics, rec, self.ctx)

    def flow(self, acct: TcpAccount, to_server: int, to_client: int) -> None:
        account.flow(self.metrics, acct, to_server, to_client)

    def submit(self, rec, acct: TcpAccount | None = None) -> bool:
        """A finished connection (with the account ``opened`` gave, if it was opened) or
        one HTTP exchange."""
        self.counts["submitted"] += 1
        if getattr(rec, "bytes_sent", None) is not None:
            account.closed(self.metrics, acct, rec, self.ctx)
        else:
            account.request(self.metrics, rec, self.ctx)
        if len(self.queue) >= self.config.queue_size:
            self.counts["dropped_queue_full"] += 1
            self.metrics.inc("hostmesh_telemetry_dropped_total", ("queue", "full"))
            return False
        self.queue.append(rec)
        if len(self.queue) >= self.config.batch_size:
            self._wake.set()
        return True

    def submit_requests(self, recs: list) -> None:
        """HTTP exchanges' records, in order: what ``submit`` of each one after the other
        does (the same counts, series, drops and wake-up), in one call per batch of the
        core's exchanges (l7core.on_exchanges), the lookups made once."""
        n = len(recs)
        self.counts["submitted"] += n
        account.requests(self.metrics, recs, self.ctx)
        queue = self.queue
        room = max(self.config.queue_size - len(queue), 0)
        if room < n:
            self.counts["dropped_queue_full"] += n - room
            self.metrics.inc("hostmesh_telemetry_dropped_total", ("queue", "full"), n - room)
            recs = recs[:room]
        queue.extend(recs)
        if len(queue) >= self.config.batch_size:
            self._wake.set()

    def _open_log(self):
        target = self.config.access_log
        if target == "off":
            return None
        if target == "stderr":
            return sys.stderr
        return open(target, "a", buffering=1)

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._log = self._open_log()
        if self.config.kafka is not None:
            try:
                from agent.telemetry.kafka import KafkaSink

                self.sinks.append(KafkaSink(self.config.kafka, self.metrics))
            except ImportError as e:
                logger.warning("kafka sink unavailable: %s", e)
        if self.config.otlp is not None:
            try:
                from agent.telemetry.otlp import OtlpSink

                self.sinks.append(OtlpSink(self.config.otlp, self.node, self.metrics))
            except ImportError as e:
                logger.warning("otlp sink unavailable: %s", e)
        for s in self.sinks:
            s.start()
        task_status.started()
        last_tick = trio.current_time()
        try:
            while True:
                with trio.move_on_after(self.config.flush_interval_s):
                    await self._wake.wait()
                self._wake = trio.Event()
                if trio.current_time() - last_tick >= self.config.flush_interval_s:
                    last_tick = trio.current_time()
                    for hook in self.tick_hooks:
                        hook()
                self.flush()
                for s in self.sinks:
                    tick = getattr(s, "tick", None)
                    if tick is not None:
                        tick()
        finally:
            self.flush()
            for s in self.sinks:
                s.stop()

    def flush(self) -> None:
        while self.queue:
            batch = [self.queue.popleft() for _ in range(min(len(self.queue), self.config.batch_size))]
            if self._log is not None:
                # each record's line as the encoder writes it, without building its dict
                self._log.write("\n".join([r.json_line() for r in batch]) + "\n")
                self._log.flush()
                self.counts["access_log"] += len(batch)
            if self.sinks:  # Kafka and OTLP read the documents
                docs = [r.to_json() for r in batch]
                for s in self.sinks:
                    s.offer(batch, docs)

    def stats(self) -> dict:
        out = dict(self.counts, queue_depth=len(self.queue))
        for s in self.sinks:
            out[s.name] = s.stats()
        return out
