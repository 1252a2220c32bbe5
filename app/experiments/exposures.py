"""Exposure events: who saw which variant of which experiment, produced off the request path.

An evaluation appends a small tuple to a buffer (no I/O, no JSON); a task produces the
buffer to `exposures` in batches every `FLAGSTREAM_EXPOSURE_FLUSH_MS`. When Kafka cannot keep
up the buffer is bounded: new exposures are dropped and counted
(`flagstream_exposures_total{outcome="dropped"}`), never the request delayed. Each exposure
has a unique `exposure_id`, so a consumer can drop the duplicates a producer retry may make
where the broker has no idempotent producer.

Exposures of evaluations are at most `FLAGSTREAM_EXPOSURE_FLUSH_MS` in the buffer: a worker
stopped cleanly produces them, a killed one loses that much. Exposures an SDK posts are
acknowledged only once the broker has them (`produce`), so an acknowledged one is never lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from aiokafka import AIOKafkaProducer
from mode import Service

from app.infra.metrics import Metrics
from app.infra.records import SCHEMA_VERSION, dumps
from app.infra.settings import Settings
from app.infra.topics import EXPOSURES, partition_of

__all__ = ["ExposureSink", "Pending", "exposure_id"]

log = logging.getLogger(__name__)

YIELD_EVERY = 200  # exposures encoded between two yields to the event loop in `flush`
PARTITION_CACHE_SIZE = 65536  # targeting keys whose partition is remembered
# Bytes of one produce batch: ~2,000 exposures rather than aiokafka's default ~60 (16 KiB), so
# a busy worker sends a few large requests per flush instead of hundreds of small ones.
BATCH_BYTES = 512 * 1024

# (environment, flag, variant, flag_version, targeting_key, timestamp, source, exposure_id,
#  experiment)
Pending = tuple[str, str, str, int, str, float, str, str, str]


def exposure_id() -> str:
    """128 random bits as hex: unique without uuid4's object overhead on the hot path."""
    return os.urandom(16).hex()


def to_json(pending: Pending) -> dict[str, Any]:
    environment, flag, variant, version, targeting_key, timestamp, source, ident, experiment = (
        pending
    )
    return {
        "schema": SCHEMA_VERSION,
        "exposure_id": ident,
        "environment": environment,
        "flag": flag,
        "experiment": experiment,
        "variant": variant,
        "flag_version": version,
        "targeting_key": targeting_key,
        "timestamp": timestamp,
        "source": source,
    }


class ExposureSink(Service):
    """Buffers exposures and produces them in batches."""

    def __init__(self, settings: Settings, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.produced = metrics.exposures.labels("produced")
        self.dropped = metrics.exposures.labels("dropped")
        self.settings = settings
        self.buffer: list[Pending] = []
        self._producer: AIOKafkaProducer | None = None
        self._partitions: dict[bytes, tuple[int, int]] = {}
        # Resolved by the flush that takes the buffer with the number of its exposures that
        # could not be produced; created by the first `produce` after the previous flush.
        self._flushed: asyncio.Future[int] | None = None

    def emit(self, pending: Pending) -> None:
        """Queue one exposure; drops (and counts) it when the buffer is full."""
        if len(self.buffer) < self.settings.exposure_buffer:
            self.buffer.append(pending)
        else:
            self.dropped.inc()

    async def produce(self, exposures: list[Pending]) -> bool:
        """Queue exposures and wait until the broker has every one of them (True), or until
        the flush that took them lost some (False); False at once when the buffer is full.
        All or none are queued, so a caller that hears False may retry them all."""
        if len(self.buffer) + len(exposures) > self.settings.exposure_buffer:
            self.dropped.inc(len(exposures))
            return False
        self.buffer.extend(exposures)
        if self._flushed is None:
            self._flushed = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._flushed) == 0

    async def on_start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap,
            acks="all",
            linger_ms=5,
            enable_idempotence=self.settings.producer_idempotence,
            max_batch_size=BATCH_BYTES,
        )
        await self._producer.start()

    async def on_stop(self) -> None:
        await self.flush()
        if self._producer is not None:
            await self._producer.stop()

    @Service.task
    async def _flush_forever(self) -> None:
        interval = self.settings.exposure_flush_ms / 1000
        while not self.should_stop:
            await asyncio.sleep(interval)
            await self.flush()

    async def flush(self) -> None:
        """Produce everything buffered; returns once the broker has acknowledged it.

        Records go into one aiokafka batch per partition (`create_batch`), partitioned like
        Kafka's default partitioner so exposures co-partition with anything else keyed by
        targeting key: ~3 µs of CPU per exposure against ~13 µs for `send()` per record,
        which is what kept a worker from producing the exposures of ~35k evaluations/s.
        The loop yields every `YIELD_EVERY` records so a large flush never stalls requests.
        """
        if not self.buffer or self._producer is None:
            return
        pending, self.buffer = self.buffer, []
        flushed, self._flushed = self._flushed, None
        failed = len(pending)
        try:
            failed = await self._produce(pending)
        except Exception:  # the broker went away mid-flush: count the loss, keep flushing
            log.exception("%d exposures could not be produced", failed)
            self.dropped.inc(failed)
        finally:
            if flushed is not None:
                flushed.set_result(failed)

    async def _produce(self, pending: list[Pending]) -> int:
        """Produce `pending`; the number of exposures that could not be."""
        producer = self._producer
        if producer is None:
            raise RuntimeError("exposures are produced only once the sink started")
        open_batches: dict[int, tuple[Any, int]] = {}  # partition -> (batch, records in it)
        in_flight: list[tuple[int, Any]] = []  # (records, future of the broker's answer)
        failed = 0

        async def ship(partition: int) -> None:
            nonlocal failed
            batch, records = open_batches.pop(partition)
            try:
                future = await producer.send_batch(batch, EXPOSURES, partition=partition)
            except Exception:
                log.exception("a batch of %d exposures could not be sent", records)
                failed += records
                return
            in_flight.append((records, future))

        partitions = len(await producer.partitions_for(EXPOSURES))
        for index, exposure in enumerate(pending, 1):
            key = exposure[4].encode()
            partition = self._partition(key, partitions)
            value, timestamp = dumps(to_json(exposure)), int(exposure[5] * 1000)
            for _ in range(2):  # the open batch, else a new one
                batch, records = open_batches.get(partition) or (producer.create_batch(), 0)
                if batch.append(key=key, value=value, timestamp=timestamp) is not None:
                    open_batches[partition] = (batch, records + 1)
                    break
                if not records:  # larger than a batch may be
                    failed += 1
                    break
                await ship(partition)  # full: send it and open the next
            if index % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        for partition in list(open_batches):
            await ship(partition)
        results = await asyncio.gather(*(future for _, future in in_flight), return_exceptions=True)
        failed += sum(
            records
            for (records, _), result in zip(in_flight, results, strict=True)
            if isinstance(result, BaseException)
        )
        self.produced.inc(len(pending) - failed)
        if failed:
            self.dropped.inc(failed)
            log.error("%d of %d exposures could not be produced", failed, len(pending))
        return failed

    def _partition(self, key: bytes, partitions: int) -> int:
        """`partition_of`, remembered per key: a request's flags expose one key many times."""
        cached = self._partitions.get(key)
        if cached is None or cached[0] != partitions:
            if len(self._partitions) >= PARTITION_CACHE_SIZE:
                self._partitions.clear()
            cached = self._partitions[key] = (partitions, partition_of(key, partitions))
        return cached[1]
