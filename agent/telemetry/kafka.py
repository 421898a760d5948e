"""The Kafka sink — the one module that imports aiokafka.

aiokafka is asyncio; the agent is trio. The producer lives in an asyncio loop in its
own thread (NOTES.md: a deque drained every 10 ms costs the data path ~0.03 us per
record, and a stalled broker stalls only that thread). ``offer`` (trio thread) appends
to a buffer bounded by bytes; beyond ``buffer_bytes`` records are dropped and counted.
The loop sends from the head of the buffer and removes a record only once the broker
acknowledged it; on errors it backs off (capped) and retries, restarting the producer
when needed, so a broker outage is survived with exact accounting:
``delivered + dropped + buffered == produced``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from agent.telemetry.metrics import count_exports

logger = logging.getLogger("hostmesh.kafka")

# Records handed to the producer per round: enough to fill a batch, few enough that an
# outage is noticed quickly.
SEND_WINDOW = 512
BACKOFF_FIRST_S = 0.2
BACKOFF_CAP_S = 10.0


class KafkaSink:
    name = "kafka"

    def __init__(self, config, metrics) -> None:
        self.config = config
        self.metrics = metrics
        self._buf: collections.deque = collections.deque()  # (key, value)
        self._bytes = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counts = {"produced": 0, "delivered": 0, "dropped_buffer_full": 0, "send_errors": 0, "connected": False}
        self._seen = (0, 0)  # delivered, send errors already in the registry

    # ---- trio thread -------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="hostmesh-kafka", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def offer(self, batch, docs) -> None:
        limit = self.config.buffer_bytes
        with self._lock:
            for rec in batch:
                value = rec.json_line().encode()  # the access log's line: json.dumps(doc)'s bytes, cheaper
                self.counts["produced"] += 1
                if self._bytes + len(value) > limit:
                    self.counts["dropped_buffer_full"] += 1
                    self.metrics.inc("hostmesh_telemetry_dropped_total", ("kafka", "buffer_full"))
                    continue
                self._buf.append((rec.key.encode(), value))
                self._bytes += len(value)

    def tick(self) -> None:
        """Called by the pipeline in the trio thread, which owns the metrics registry: the
        asyncio thread only counts, and the counts reach the registry here (a registry
        written from two threads could change size under a scrape's iteration)."""
        with self._lock:
            delivered, errors = self.counts["delivered"], self.counts["send_errors"]
        self._seen = count_exports(self.metrics, "kafka", self._seen, delivered, errors)

    def stats(self) -> dict:
        with self._lock:
            return dict(self.counts, buffered=len(self._buf), buffered_bytes=self._bytes)

    # ---- the asyncio thread ------------------------------------------------------------
    def _main(self) -> None:
        asyncio.run(self._run())

    def _producer(self) -> AIOKafkaProducer:
        c = self.config
        kw = dict(bootstrap_servers=c.bootstrap, linger_ms=c.linger_ms, max_batch_size=c.batch_bytes,
                  compression_type=None if c.compression == "none" else c.compression,
                  acks=int(c.acks) if c.acks != "all" else "all", enable_idempotence=c.idempotence,
                  security_protocol=c.security_protocol, request_timeout_ms=10000, retry_backoff_ms=200)
        if c.sasl_mechanism:
            kw.update(sasl_mechanism=c.sasl_mechanism, sasl_plain_username=c.sasl_username,
                      sasl_plain_password=c.sasl_password)
        if c.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            kw["ssl_context"] = create_ssl_context(cafile=c.ssl_cafile, certfile=c.ssl_certfile, keyfile=c.ssl_keyfile)
        return AIOKafkaProducer(**kw)

    async def _run(self) -> None:
        backoff = BACKOFF_FIRST_S
        warned = False
        producer = None
        while not self._stop.is_set():
            if producer is None:
                producer = self._producer()
                try:
                    await asyncio.wait_for(producer.start(), timeout=10)
                    self.counts["connected"] = True
                    backoff = BACKOFF_FIRST_S
                    logger.info("kafka connected", extra={"bootstrap": self.config.bootstrap})
                except (TimeoutError, KafkaError, OSError) as e:
                    self.counts["connected"] = False
                    if not warned:
                        logger.warning("kafka broker %s unreachable (%s); records are buffered and retried",
                                       self.config.bootstrap, e)
                        warned = True
                    await _close(producer)
                    producer = None
                    await self._sleep(backoff)
                    backoff = min(BACKOFF_CAP_S, backoff * 2)
                    continue
            with self._lock:
                window = [self._buf[i] for i in range(min(SEND_WINDOW, len(self._buf)))]
            if not window:
                await self._sleep(0.01)
                continue
            ok = await self._send(producer, window)
            with self._lock:
                for _ in range(ok):
                    key, value = self._buf.popleft()
                    self._bytes -= len(value)
                self.counts["delivered"] += ok
            if ok < len(window):
                with self._lock:
                    self.counts["send_errors"] += 1
                    self.counts["connected"] = False
                await _close(producer)
                producer = None
                await self._sleep(backoff)
                backoff = min(BACKOFF_CAP_S, backoff * 2)
        if producer is not None:
            await _close(producer)

    async def _send(self, producer: AIOKafkaProducer, window) -> int:
        """Send in order; returns how many from the head were acknowledged."""
        futs = []
        try:
            for key, value in window:
                futs.append(await producer.send(self.config.topic, value=value, key=key))
        except (KafkaError, OSError) as e:
            logger.debug("kafka send failed: %s", e)
        done = 0
        for f in futs:
            try:
                await asyncio.wait_for(f, timeout=15)
            except (TimeoutError, KafkaError, OSError):
                break
            done += 1
        return done

    async def _sleep(self, s: float) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._stop.wait, s)


async def _close(producer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), timeout=5)
    except Exception:  # noqa: BLE001 - a producer that cannot even stop is simply dropped
        pass
