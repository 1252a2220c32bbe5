"""Keeps this worker's flag table in step with the changelog, and knows when it has caught up.

Every worker reads every partition of `flags-changelog` (no consumer group: the table is held
in full everywhere) from the offset its RocksDB says comes next. A record is applied by its
meta header (`app.infra.records.changelog_headers`, written by the decider) without parsing
its value, which the table stores as read: the definition is parsed and checked when it is
compiled, after ready (`app.evaluation.live_flags`). A record without that header is decoded.

Caught up is decided by fences, not end offsets: a broker's end offset can stop short of the
last record (the embedded Tansu reports the base offset of the last batch plus one), and a
worker that trusted it would serve a stale flag forever after a restart. Instead the worker
appends a fence record to each partition and is caught up once it has read its own fences:
everything written before the fence has then been applied, on any Kafka-compatible broker.
The flag-change agent uses the same fence when it takes over a partition.

At start, and on `recover()` (called by `tables.broker_watch` when the broker comes back),
the table is checked against the changelog (`tables.changelog_check`); a table built from
another log is moved aside and rebuilt, so it never holds a version the broker's log
contradicts. Who else cares about the records read (writers waiting for their change,
compiled flags to drop) subscribes: `on_applied`, `on_rebuild`, `on_unreadable`, `before_ready`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from operator import attrgetter
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from mode import Service

from app.infra.changelog_signing import Verdict
from app.infra.fetch_wait import pace_when_idle
from app.infra.kafka_security import kafka_client_options
from app.infra.metrics import Metrics
from app.infra.raw_records import RAW_RECORDS, install_raw_records
from app.infra.records import CHANGE_HEADER, AppliedChange, loads, routed_change
from app.infra.settings import Settings, changelog_signer
from app.infra.shutdown import stop_within
from app.infra.topics import Topics, ensure_topics
from tables.changelog_check import fingerprint, keep_lost_table, same_log
from tables.flags import CLOCK_EVERY, ChangelogBatch, FlagTable, RecordReader

__all__ = [
    "APPLY_SLICE_S",
    "CLOCK_EVERY",
    "FENCE_KEY",
    "READY_WAIT_S",
    "AppliedListener",
    "FlagReplication",
]

log = logging.getLogger(__name__)

FENCE_KEY = b"__fence__"
READY_WAIT_S = 5.0  # how long a request to a worker still recovering waits for it
LOG_CHECK_ATTEMPTS = 3  # checks of the changelog at start the broker may leave unanswered
FENCE_ATTEMPTS = 5  # sends of one fence: a re-created topic may fail its first produce
UNREADABLE_PAUSE_S = 1.0  # pause between reads while the log cannot be read (awaiting recover)
FETCH_MAX_RECORDS = 500  # records per fetch: aiokafka parses them in one turn of the loop
# Applying time per turn of the event loop (a catch-up reads thousands of records): the most
# an answer waits behind it, plus one record and the slice's single RocksDB write.
APPLY_SLICE_S = 0.005
# CLOCK_EVERY (tables.flags): records applied between two looks at the clock (a few us each)

# Called with the changes read from the changelog, in runs of consecutive ones (in changelog
# order), and whether the run was new to the table (fresh) or already reflected in it.
AppliedListener = Callable[[list[AppliedChange], bool], None]


class FlagReplication(Service):
    """Tails the changelog into the `FlagTable`; `ready` is set once the start fences are read."""

    def __init__(
        self, settings: Settings, table: FlagTable, metrics: Metrics, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.metrics = metrics
        self.table = table
        self.ready = asyncio.Event()
        self.changelog_topic = Topics.of(settings).flags_changelog
        # Only what the decider signed is applied (app.infra.changelog_signing).
        self.signer = changelog_signer(settings)
        self.partitions = [
            TopicPartition(self.changelog_topic, p) for p in range(settings.flag_change_partitions)
        ]
        self._progress = asyncio.Condition()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        # Held while records are fetched and applied, and while a recovery swaps the table.
        self._table_lock = asyncio.Lock()
        # Set when the log could not be read on; cleared by `recover()`.
        self._unreadable = False
        self._applied_listeners: list[AppliedListener] = []
        self._rebuild_listeners: list[Callable[[], None]] = []
        self._unreadable_listeners: list[Callable[[], None]] = []
        self._before_ready: list[Callable[[], Awaitable[None]]] = []
        self._persister: asyncio.Future[None] | None = None

    # -- subscriptions ----------------------------------------------------------------------

    def on_applied(self, listener: AppliedListener) -> None:
        """Call `listener(changes, fresh)` for every change read from the changelog, a run
        of consecutive ones per call (a catch-up's slice is mostly one run): `fresh` when
        the table applied them, False for records the table already reflects. Before ready
        nobody waits for a change: a listener should look at a change only when it must
        (a change's fields are decoded when first read)."""
        self._applied_listeners.append(listener)

    def before_ready(self, step: Callable[[], Awaitable[None]]) -> None:
        """Await `step` once the table has caught up at start, before `ready` is set: what
        must hold as soon as the worker says it is ready (writes accepted) goes here."""
        self._before_ready.append(step)

    def on_rebuild(self, listener: Callable[[], None]) -> None:
        """Call `listener` when the table is wiped to be rebuilt from another log: whatever
        was derived from the table (compiled flags) must be dropped with it."""
        self._rebuild_listeners.append(listener)

    def on_unreadable(self, listener: Callable[[], None]) -> None:
        """Call `listener` when the changelog cannot be read on (the broker's log is not the
        one the table follows): writes must stop until `recover()` has run."""
        self._unreadable_listeners.append(listener)

    # -- lifecycle --------------------------------------------------------------------------

    async def on_start(self) -> None:
        self.table.open()
        install_raw_records()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap,
            **kafka_client_options(self.settings),
            acks="all",
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap,
            **kafka_client_options(self.settings),
            group_id=None,
            enable_auto_commit=False,
            # Never jump silently: a position the log does not have means another log (Kafka
            # says so; Tansu answers empty and the broker watch's log check notices instead).
            auto_offset_reset="none",
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
            # Records as aiokafka's reader yields them (offset, key, value, headers), not
            # `ConsumerRecord`s: a sixth of a catch-up (app.infra.raw_records).
            key_deserializer=RAW_RECORDS,
        )
        self._say_how_records_are_trusted()
        await self._producer.start()
        await self._consumer.start()
        pace_when_idle(self._consumer, self.settings.fetch_max_wait_ms, self.settings.idle_poll_ms)
        if not await self._same_log_at_start():
            self._move_table_aside()
        self._consumer.assign(self.partitions)
        self._seek_to_table()
        self.metrics.consumer_lag.watch("flag-changelog", self._consumer, self._table_position)
        self.add_future(self._catch_up())

    async def _same_log_at_start(self) -> bool:
        """`same_log`, asked again while the broker is too slow to answer it: a slow answer
        says nothing about the log (after a recovery the broker watch asks again itself)."""
        for attempt in range(1, LOG_CHECK_ATTEMPTS + 1):
            try:
                return await same_log(self.settings, self.table, self.partitions)
            except TimeoutError:
                if attempt == LOG_CHECK_ATTEMPTS:
                    raise
                log.warning("the changelog check had no answer in time: asking again")
        raise AssertionError("unreachable")

    def _say_how_records_are_trusted(self) -> None:
        """Export whether the changelog is authenticated, and warn when it is not."""
        self.metrics.changelog_signed.set(1 if self.signer.enabled else 0)
        if not self.signer.enabled:
            log.warning(
                "FLAGSTREAM_CHANGELOG_KEY is not set: changelog records are neither signed nor "
                "checked, so any producer allowed to write %s can change a flag "
                "(docs/deploy.md, Kafka ACLs and the changelog key)",
                self.changelog_topic,
            )
        elif self.signer.accept_unsigned:
            log.warning(
                "FLAGSTREAM_CHANGELOG_UNSIGNED=true: unsigned changelog records are applied "
                "too; turn it off once the log holds only signed records"
            )

    async def on_stop(self) -> None:
        """Stop the Kafka clients, each within `CLIENT_STOP_TIMEOUT_S`; closing the table
        writes what the catch-up still had queued."""
        if self._persister is not None:
            self._persister.cancel()
        for client in (self._consumer, self._producer):
            if client is not None:
                await stop_within(client.stop())
        self.table.close()

    async def _catch_up(self) -> None:
        started = time.monotonic()
        await self.sync(range(self.settings.flag_change_partitions))
        log.info(
            "flag table caught up in %.2fs: %d environments",
            time.monotonic() - started,
            len(self.table.environments()),
        )
        for step in self._before_ready:
            await step()
        self._set_ready()
        log.info("flag table ready %.2fs after its start", time.monotonic() - started)

    def _set_ready(self) -> None:
        """Say the table serves the changelog's tail, and write what its catch-up queued."""
        self.ready.set()
        self.metrics.ready.set(1)
        if self.table.pending() and (self._persister is None or self._persister.done()):
            self._persister = asyncio.ensure_future(self._persist())

    async def _persist(self) -> None:
        """Write the catch-up's queued batches to RocksDB, one per turn of the loop (each is
        a slice the catch-up applied in `APPLY_SLICE_S`: its write costs a few times that)."""
        started, records = time.monotonic(), self.table.pending()
        while self.table.persist_slice():
            await asyncio.sleep(0)  # a turn of the loop between writes
            if self.should_stop:
                return  # closing the table writes the rest
        log.info(
            "flag table wrote %d caught-up changes in %.2fs", records, time.monotonic() - started
        )

    # -- waiting for the table --------------------------------------------------------------

    async def sync(self, partitions: Iterable[int]) -> None:
        """Return once every changelog record written before this call has been applied."""
        # The fences go together (one produce request, not a round trip per partition).
        sent = await asyncio.gather(*(self._send_fence(p) for p in partitions))
        for partition, offset in sent:
            await self.wait_applied(partition, offset)

    async def wait_ready(self, timeout_s: float = READY_WAIT_S) -> bool:
        """Whether the table caught up, waiting up to `timeout_s` for it (True at once after)."""
        if self.ready.is_set():
            return True
        try:
            await asyncio.wait_for(self.ready.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def wait_applied(self, partition: int, offset: int) -> None:
        """Return once the changelog record at (partition, offset) is in the table."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.table.position(partition) > offset)

    async def end_offsets(self, timeout_s: float) -> dict[int, int]:
        """The broker's end offset of each changelog partition (as the broker reports it)."""
        ends = await asyncio.wait_for(
            self._kafka_consumer().end_offsets(self.partitions), timeout_s
        )
        return {tp.partition: offset for tp, offset in ends.items()}

    async def _send_fence(self, partition: int) -> tuple[int, int]:
        """Append a fence to `partition`; (partition, offset) once the broker has it.

        Retried: the first produce to a partition of a topic re-created on a broker that lost
        its data can fail once (Tansu finds a record a client sent before the topic existed).
        """
        if self._producer is None:
            raise RuntimeError("the replication is not started")
        for attempt in range(1, FENCE_ATTEMPTS + 1):
            try:
                # A fence is unique, so a restarted worker can recognise the last one it read.
                metadata = await self._producer.send_and_wait(
                    self.changelog_topic, os.urandom(8), key=FENCE_KEY, partition=partition
                )
                return metadata.partition, metadata.offset
            except KafkaError as exc:
                if attempt == FENCE_ATTEMPTS:
                    raise
                log.warning(
                    "fence on %s/%d failed (%r): retrying", self.changelog_topic, partition, exc
                )
                await asyncio.sleep(0.1 * attempt)
        raise AssertionError("unreachable")

    # -- another log: check, move aside, rebuild --------------------------------------------

    async def recover(self) -> None:
        """Make the table agree with the broker's log again, after the broker came back.

        Re-create the topics it lacks, check the changelog is the one the table was built from
        (else move the table aside and rebuild it from the new log, rather than serve or
        decide on flags the new log contradicts), and re-read the fences.
        """
        await ensure_topics(self.settings)
        async with self._table_lock:
            if not await same_log(self.settings, self.table, self.partitions):
                self.ready.clear()
                self.metrics.ready.set(0)
                self._move_table_aside()
            self._seek_to_table()
            self._unreadable = False
        await self.sync(range(self.settings.flag_change_partitions))
        self._set_ready()
        log.info(
            "flag table agrees with the broker again: %d environments",
            len(self.table.environments()),
        )

    def _seek_to_table(self) -> None:
        """Read the changelog on from where the table ends."""
        consumer = self._kafka_consumer()
        for tp in self.partitions:
            consumer.seek(tp, self.table.position(tp.partition))

    def _move_table_aside(self) -> None:
        """Start the table again from the changelog's beginning, keeping the old one on disk."""
        kept = keep_lost_table(self.table)
        log.warning(
            "the changelog is not the one this flag table was built from (the broker lost "
            "its data, or is another cluster): rebuilding the table from the changelog; "
            "the old table is kept in %s",
            kept,
        )
        self.table.wipe()
        for listener in self._rebuild_listeners:
            listener()
        self.metrics.table_rebuilds.inc()

    # -- the tail ---------------------------------------------------------------------------

    @Service.task
    async def _tail(self) -> None:
        consumer = self._kafka_consumer()
        while not self.should_stop:
            async with self._table_lock:
                batches = await self._fetch(consumer)
                for tp, records in batches.items():
                    await self._apply(tp.partition, records)
            if not batches:
                if self._unreadable:
                    await self.sleep(UNREADABLE_PAUSE_S)
                continue
            await self._tell_progress()

    async def _tell_progress(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def _fetch(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[Any]]:
        """The next records, or none when the log cannot be read on (listeners are told)."""
        try:
            batches: dict[TopicPartition, list[Any]] = await consumer.getmany(
                timeout_ms=200, max_records=FETCH_MAX_RECORDS
            )
        except KafkaError as exc:
            # Out of range: the broker's log is not the one the table follows. Stop reading
            # until it has been checked (`recover`).
            self._unreadable = True
            log.warning("the changelog cannot be read on (%r): checking it", exc)
            for listener in self._unreadable_listeners:
                listener()
            return {}
        return batches

    async def _apply(self, partition: int, records: Sequence[Any]) -> None:
        """Apply fetched records a slice at a time, turning the loop between slices: a
        catch-up of thousands of records never holds it much longer than `APPLY_SLICE_S`."""
        start = 0
        while start < len(records):
            if start:
                await self._tell_progress()  # waiters for what is in already need not wait
            await asyncio.sleep(0)  # a turn of the loop (the fetch's parsing took one)
            start = self.apply_slice(partition, records, start)
            if not self.ready.is_set():
                # What a catch-up loads (the table's mirror: every flag's definition) lives
                # as long as the worker. Each full collection would walk it again, one per
                # 25% of growth: ~40% of a catch-up's CPU. Frozen, the collector leaves it
                # (and what else the start built) alone; O(1), and what a later change
                # replaces is still freed by reference counting (it holds no cycles).
                gc.freeze()

    def apply_slice(
        self, partition: int, records: Sequence[Any], start: int, budget_s: float = APPLY_SLICE_S
    ) -> int:
        """Apply `records[start:]` in one table batch until `budget_s` has passed (one record
        at least); the index of the first record left.

        Once per record of a catch-up: the clock is read every `CLOCK_EVERY` records, and a
        record is read by its header alone unless a changelog key must vouch for it first.
        """
        deadline = time.perf_counter() + budget_s
        batch = self.table.batch(partition)
        by_header = not self.signer.enabled
        end = batch.add_records(
            records, start, self._reader(partition), deadline, by_header=by_header
        )
        last = records[end - 1]
        # Before ready the RocksDB write waits (`_persist`): ready needs only the mirror.
        fresh = batch.commit(fingerprint(last.key, last.value), defer=not self.ready.is_set())
        self._heard(fresh, batch)
        return end

    def _reader(self, partition: int) -> RecordReader:
        """How the records of `partition` are read: by their header alone, unless a
        changelog key must vouch for each first."""
        if self.signer.enabled:
            return partial(self._read_trusted, partition)
        return partial(_read, self.metrics)

    def _read_trusted(
        self, partition: int, record: Any
    ) -> tuple[AppliedChange | None, bytes | None]:
        """`_read(record)`, for a record the changelog key vouches for; (None, None) for one
        it does not: the table moves past it and its flag keeps its last good version."""
        signer = self.signer
        if signer.enabled and record.key != FENCE_KEY:  # a fence changes no flag
            verdict = signer.verify(
                self.changelog_topic, partition, record.key, record.value, record.headers
            )
            if not signer.trusts(verdict):
                self._refuse(partition, record.offset, verdict)
                return None, None
        return _read(self.metrics, record)

    def _refuse(self, partition: int, offset: int, verdict: Verdict) -> None:
        """Count and log (without its content) a record no changelog key vouches for."""
        self.metrics.changelog_records.labels(verdict.value).inc()
        log.warning(
            "not applying changelog record %s/%d/%d: %s (no changelog key of this worker "
            "signed it for this partition; a producer other than the decider wrote it, or the "
            "workers hold different FLAGSTREAM_CHANGELOG_KEYs)",
            self.changelog_topic,
            partition,
            offset,
            verdict.value,
        )

    def _heard(self, fresh: list[AppliedChange], batch: ChangelogBatch) -> None:
        """Count the changes of a committed batch (`fresh`: the ones it applied) and tell the
        `on_applied` listeners what it read, in runs; the newest produce time of the batch
        told the metrics once, not once per change (from the batch's loop: a change is not
        read before ready)."""
        metrics = self.metrics
        if fresh:
            metrics.changelog_records.labels("applied").inc(len(fresh))
            if batch.newest_produced is not None:
                metrics.applied_change(batch.newest_produced)
            if self.ready.is_set():
                observe, now = metrics.propagation_seconds.observe, time.time()
                for at in map(_produced_at, fresh):
                    observe(max(0.0, now - at))
        if batch.stale:
            metrics.changelog_records.labels("skipped").inc(batch.stale)
        listeners = self._applied_listeners
        if listeners:
            for changes, were_fresh in batch.heard():
                for listener in listeners:
                    listener(changes, were_fresh)

    def _table_position(self, tp: TopicPartition) -> int:
        """The next changelog offset the table reads (its consumer lag is counted from it)."""
        return self.table.position(tp.partition)

    def _kafka_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("the replication is not started")
        return self._consumer


_produced_at = attrgetter("produced_at")


def _read(metrics: Metrics, record: Any) -> tuple[AppliedChange | None, bytes | None]:
    """The change a changelog record holds, and its meta header when it was read from it.

    The decider writes each change's meta in a header (`app.infra.records.changelog_headers`):
    read from it, the value is stored unparsed. A record without one (a fence, a record from
    before it, a foreign producer's) or with a meta this worker cannot read is decoded whole.
    """
    value = record.value
    for name, meta in record.headers:
        if name == CHANGE_HEADER and value is not None:
            try:
                return routed_change(meta, value), meta
            except (ValueError, TypeError):  # not JSON, or a header without a value
                break
    return _decode_changelog(record.key, value, metrics), None


def _decode_changelog(
    key: bytes | None, value: bytes | None, metrics: Metrics
) -> AppliedChange | None:
    """The change a changelog record holds; None for fences and (logged) undecodable records."""
    if key == FENCE_KEY:
        metrics.changelog_records.labels("fence").inc()
        return None
    try:
        return AppliedChange.from_json(loads(value or b""))
    except (ValueError, TypeError, KeyError) as exc:
        # Only our agent writes here; a bad record is a bug or a foreign writer. Skip it loudly
        # rather than stop every worker's table at it.
        metrics.changelog_records.labels("undecodable").inc()
        log.error("skipping undecodable changelog record: %s", exc)
        return None
