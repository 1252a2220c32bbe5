"""One batching producer for the records of experiments: exposures and metric events.

Each kind of record has a `Channel`: its topic, how a record is keyed, timed and encoded, its
own bounded buffer and its own counters. A `RecordSink` owns the one Kafka producer and
flushes every channel `FLAGSTREAM_EXPOSURE_FLUSH_MS` after a record arrives (idle, it
sleeps). A record is appended to its channel's buffer as a small tuple (no I/O, no JSON on
the request path); when Kafka cannot keep up, a full buffer drops new records and counts
them (`outcome="dropped"`), never delaying a request. `Channel.produce` is the acknowledged
path: it returns once the broker has every record it was given, so an SDK that hears 202
never loses one.

Every channel is partitioned like Kafka's default partitioner on its key bytes, so records
of two channels with the same key (a targeting key) and the same partition count meet in
one partition number.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaProducer
from mode import Service
from prometheus_client import Counter

from app.infra.kafka_security import kafka_client_options
from app.infra.records import dumps
from app.infra.settings import Settings
from app.infra.topics import partition_of

__all__ = ["Channel", "RecordKind", "RecordSink"]

log = logging.getLogger(__name__)

R = TypeVar("R")

YIELD_EVERY = 200  # records encoded between two yields to the event loop in `flush`
PARTITION_CACHE_SIZE = 65536  # keys whose partition is remembered
# Bytes of one produce batch: ~2,000 exposures rather than aiokafka's default ~60 (16 KiB), so
# a busy worker sends a few large requests per flush instead of hundreds of small ones.
BATCH_BYTES = 512 * 1024


@dataclass(frozen=True, slots=True)
class RecordKind(Generic[R]):
    """What makes a pending record a Kafka record: its key, time and value (its topic is the
    deployment's: `Channel.topic`)."""

    noun: str  # for logs: "exposures", "metric events"
    key_of: Callable[[R], bytes]
    timestamp_ms_of: Callable[[R], int]
    to_json: Callable[[R], dict[str, Any]]


class Channel(Generic[R]):
    """One kind of record's bounded buffer in the sink, with its produced/dropped counters."""

    def __init__(self, kind: RecordKind[R], bound: int, outcomes: Counter, *, topic: str) -> None:
        self.kind = kind
        self.topic = topic
        self.bound = bound
        self.outcomes = outcomes  # for outcomes of the records' sources (e.g. "unattributable")
        self.produced = outcomes.labels("produced")
        self.dropped = outcomes.labels("dropped")
        self.buffer: list[R] = []
        # Set when the buffer gets its first record: an idle sink sleeps until then.
        self.waiting = asyncio.Event()
        # Resolved by the flush that takes the buffer with the number of its records that
        # could not be produced; created by the first `produce` after the previous flush.
        self._flushed: asyncio.Future[int] | None = None

    def emit(self, record: R) -> None:
        """Queue one record; drops (and counts) it when the buffer is full."""
        if not self.buffer:
            self.waiting.set()
        if len(self.buffer) < self.bound:
            self.buffer.append(record)
        else:
            self.dropped.inc()

    async def produce(self, records: list[R]) -> bool:
        """Queue records and wait until the broker has every one of them (True), or until
        the flush that took them lost some (False); False at once when the buffer is full.
        All or none are queued, so a caller that hears False may retry them all."""
        if len(self.buffer) + len(records) > self.bound:
            self.dropped.inc(len(records))
            return False
        if not self.buffer:
            self.waiting.set()
        self.buffer.extend(records)
        if self._flushed is None:
            self._flushed = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._flushed) == 0

    def take(self) -> tuple[list[R], asyncio.Future[int] | None]:
        """The buffered records and the future their producers wait on; both start afresh."""
        pending, self.buffer = self.buffer, []
        self.waiting.clear()  # the next record after this take sets it again
        flushed, self._flushed = self._flushed, None
        return pending, flushed


class RecordSink(Service):
    """The one producer of every channel: flushes them all, batched per partition."""

    def __init__(self, settings: Settings, channels: Sequence[Channel[Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.channels = tuple(channels)
        self._producer: AIOKafkaProducer | None = None
        self._partitions: dict[bytes, tuple[int, int]] = {}

    async def on_start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap,
            **kafka_client_options(self.settings),
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
        """Flush one interval after a channel got its first record: a record waits at most
        that long, and a worker with nothing to send does not wake (it woke every 50 ms)."""
        interval = self.settings.exposure_flush_ms / 1000
        while not self.should_stop:
            await self._first_record()
            await asyncio.sleep(interval)  # what else comes meanwhile goes out in this flush
            await self.flush()

    async def _first_record(self) -> None:
        waits = [asyncio.ensure_future(channel.waiting.wait()) for channel in self.channels]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def flush(self) -> None:
        """Produce everything buffered in every channel; returns once the broker has it."""
        await asyncio.gather(*(self._flush_channel(channel) for channel in self.channels))

    async def _flush_channel(self, channel: Channel[Any]) -> None:
        if not channel.buffer or self._producer is None:
            return
        pending, flushed = channel.take()
        failed = len(pending)
        try:
            failed = await self._produce(channel, pending)
        except Exception:  # the broker went away mid-flush: count the loss, keep flushing
            log.exception("%d %s could not be produced", failed, channel.kind.noun)
            channel.dropped.inc(failed)
        finally:
            if flushed is not None:
                flushed.set_result(failed)

    async def _produce(self, channel: Channel[Any], pending: list[Any]) -> int:
        """Produce `pending` to the channel's topic; the number of records that could not be.

        Records go into one aiokafka batch per partition (`create_batch`), partitioned like
        Kafka's default partitioner so records co-partition with anything else keyed alike:
        ~3 µs of CPU per exposure against ~13 µs for `send()` per record, which is what kept
        a worker from producing the exposures of ~35k evaluations/s. The loop yields every
        `YIELD_EVERY` records so a large flush never stalls requests.
        """
        producer = self._producer
        if producer is None:
            raise RuntimeError("records are produced only once the sink started")
        kind = channel.kind
        open_batches: dict[int, tuple[Any, int]] = {}  # partition -> (batch, records in it)
        in_flight: list[tuple[int, Any]] = []  # (records, future of the broker's answer)
        failed = 0

        async def ship(partition: int) -> None:
            nonlocal failed
            batch, records = open_batches.pop(partition)
            try:
                future = await producer.send_batch(batch, channel.topic, partition=partition)
            except Exception:
                log.exception("a batch of %d %s could not be sent", records, kind.noun)
                failed += records
                return
            in_flight.append((records, future))

        partitions = len(await producer.partitions_for(channel.topic))
        for index, record in enumerate(pending, 1):
            key = kind.key_of(record)
            partition = self._partition(key, partitions)
            value, timestamp = dumps(kind.to_json(record)), kind.timestamp_ms_of(record)
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
        channel.produced.inc(len(pending) - failed)
        if failed:
            channel.dropped.inc(failed)
            log.error("%d of %d %s could not be produced", failed, len(pending), kind.noun)
        return failed

    def _partition(self, key: bytes, partitions: int) -> int:
        """`partition_of`, remembered per key: a request's flags expose one key many times."""
        cached = self._partitions.get(key)
        if cached is None or cached[0] != partitions:
            if len(self._partitions) >= PARTITION_CACHE_SIZE:
                self._partitions.clear()
            cached = self._partitions[key] = (partitions, partition_of(key, partitions))
        return cached[1]
