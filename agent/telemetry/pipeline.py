"""The path from the data plane to the sinks; it never blocks traffic.

``submit`` (trio thread) updates the metrics and appends to a bounded queue — when
full the record is dropped and counted. ``run`` flushes the queue in batches (size or
age, ``batcher``) to the access log and, when configured, to Kafka and OTLP, which run
behind their own bounded hand-offs. Delivered and dropped counts are exact per sink.
"""

from __future__ import annotations

import collections
import json
import logging
import sys

import trio

from agent.telemetry.metrics import Metrics, tcp_labels

logger = logging.getLogger("hostmesh.telemetry")


class Telemetry:
    def __init__(self, config, node: str) -> None:
        self.config = config
        self.node = node
        self.metrics = Metrics(config.max_series)
        self.queue: collections.deque = collections.deque()
        self.counts = {"submitted": 0, "dropped_queue_full": 0, "access_log": 0}
        self.sinks: list = []
        self._wake = trio.Event()
        self._log = None

    def submit(self, rec) -> bool:
        self.counts["submitted"] += 1
        if getattr(rec, "bytes_sent", None) is not None:
            lb = tcp_labels(rec)
            m = self.metrics
            m.inc("istio_tcp_connections_opened_total", lb)
            m.inc("istio_tcp_connections_closed_total", lb)
            m.inc("istio_tcp_sent_bytes_total", lb, rec.bytes_sent)
            m.inc("istio_tcp_received_bytes_total", lb, rec.bytes_received)
        if len(self.queue) >= self.config.queue_size:
            self.counts["dropped_queue_full"] += 1
            self.metrics.inc("hostmesh_telemetry_dropped_total", ("queue", "full"))
            return False
        self.queue.append(rec)
        if len(self.queue) >= self.config.batch_size:
            self._wake.set()
        return True

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
        try:
            while True:
                with trio.move_on_after(self.config.flush_interval_s):
                    await self._wake.wait()
                self._wake = trio.Event()
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
            docs = [r.to_json() for r in batch]
            if self._log is not None:
                self._log.write("".join(json.dumps(d, separators=(",", ":")) + "\n" for d in docs))
                self._log.flush()
                self.counts["access_log"] += len(docs)
            for s in self.sinks:
                s.offer(batch, docs)

    def stats(self) -> dict:
        out = dict(self.counts, queue_depth=len(self.queue))
        for s in self.sinks:
            out[s.name] = s.stats()
        return out
