"""Keeps this worker's flag table in step with the changelog, and knows when it has caught up.

Every worker reads every partition of `flags-changelog` (no consumer group: the table is held
in full everywhere) from the offset its RocksDB says comes next, and the tail of
`dead-letters` so that writers on this worker learn about rejected changes.

Caught up is decided by fences, not end offsets: a broker's end offset can stop short of the
last record (the embedded Tansu reports the base offset of the last batch plus one), and a
worker that trusted it would serve a stale flag forever after a restart. Instead the worker
appends a fence record to each partition and is caught up once it has read its own fences:
everything written before the fence has then been applied, on any Kafka-compatible broker.
The flag-change agent uses the same fence when it takes over a partition.

A worker also checks, at start, that the changelog is the one its table was built from: the
record before its stored position must have the fingerprint it stored. A broker that lost its
data (the embedded one keeps nothing across a restart) or another cluster behind the same
address fails the check, and the table is rebuilt from the changelog instead of serving
flags that no longer exist and ignoring changes whose numbers it has already seen.

The same check runs again whenever the broker comes back (`BrokerWatch`, every
`PROBE_INTERVAL_S`): while the broker is unreachable the worker serves its last known flags
and refuses writes at once (`writable` is clear); when it answers again, `recover()` re-creates
missing topics, checks the log, and if the broker lost its data moves the table aside (kept in
`<data dir>/flags.lost-<unix time>` for `flagstream restore`) and rebuilds it from the new,
usually empty, changelog. Only then are writes accepted again. The table therefore never holds
a version the broker's log contradicts, and never applies a record of one log on top of
another's state.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable
from enum import Enum
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from mode import Service

from app.control.outcomes import Outcomes
from app.infra import metrics
from app.infra.records import AppliedChange
from app.infra.settings import Settings
from app.infra.topics import DEAD_LETTERS, FLAGS_CHANGELOG, ensure_topics, topic_specs
from tables.flags import FlagTable

log = logging.getLogger(__name__)

FENCE_KEY = b"__fence__"
READY_WAIT_S = 5.0  # how long a request to a worker still recovering waits for it
PROBE_INTERVAL_S = 1.0  # how often the broker is asked whether it is there and has our topics
PROBE_TIMEOUT_S = 3.0  # longest wait for one probe (a metadata request) before "unreachable"
RECOVER_TIMEOUT_S = 30.0  # longest a recovery may take before it is tried again
FENCE_ATTEMPTS = 5  # sends of one fence: a re-created topic may fail its first produce
STOP_TIMEOUT_S = 5.0  # longest wait for each Kafka client to stop (unsent records are dropped)
KEPT_LOST_TABLES = 3  # tables moved aside after a broker lost its data, newest kept


class BrokerState(Enum):
    """What this worker knows of its broker; writes are accepted only when `REACHABLE`."""

    REACHABLE = "reachable"  # answering, and the table agrees with its changelog
    UNREACHABLE = "unreachable"  # no answer to the last probe: serving last known flags
    RECOVERING = "recovering"  # answering again; the log is being checked (table rebuilt)


class FlagReplication(Service):
    """Tails the changelog into the `FlagTable`; `ready` is set once the start fences are read."""

    def __init__(
        self, settings: Settings, table: FlagTable, outcomes: Outcomes, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.table = table
        self.outcomes = outcomes
        self.ready = asyncio.Event()
        self._partitions = [
            TopicPartition(FLAGS_CHANGELOG, p) for p in range(settings.flag_change_partitions)
        ]
        self._progress = asyncio.Condition()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        # Held while records are fetched and applied, and while a recovery swaps the table.
        self._table_lock = asyncio.Lock()
        # Set while the broker answers and the table agrees with its log: writes may go out.
        self.writable = asyncio.Event()
        self.broker_state = BrokerState.REACHABLE
        self._rebuild_listeners: list[Callable[[], None]] = []
        # Changelog ends short of the table's positions already found to be the same log.
        self._short_ends_checked: dict[int, int] = {}

    async def on_start(self) -> None:
        self.table.open()
        self._producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap, acks="all")
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            # Never jump silently: a position the log does not have means another log (Kafka
            # says so; Tansu answers empty and the probe's log check notices instead).
            auto_offset_reset="none",
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
        )
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=self.settings.bootstrap,
            request_timeout_ms=int(PROBE_TIMEOUT_S * 1000),
        )
        await self._producer.start()
        await self._consumer.start()
        await self._admin.start()
        if not await self._same_log():
            self._move_table_aside()
        self._consumer.assign([*self._partitions, self._dead_letters])
        await self._seek_to_table()
        self._set_broker_state(BrokerState.REACHABLE)
        self.add_future(self._catch_up())

    async def on_stop(self) -> None:
        """Stop the Kafka clients, each within `STOP_TIMEOUT_S`: a producer with records for
        an unreachable broker would otherwise wait for them as long as its request timeout."""
        if self._admin is not None:
            await _bounded_stop(self._admin.close())
        for client in (self._consumer, self._producer):
            if client is not None:
                await _bounded_stop(client.stop())
        self.table.close()

    def on_rebuild(self, listener: Callable[[], None]) -> None:
        """Call `listener` when the table is wiped to be rebuilt from another log: whatever
        was derived from the table (compiled flags) must be dropped with it."""
        self._rebuild_listeners.append(listener)

    @property
    def _dead_letters(self) -> TopicPartition:
        return TopicPartition(DEAD_LETTERS, 0)

    async def _seek_to_table(self) -> None:
        """Read the changelog on from where the table ends, and only new dead letters."""
        assert self._consumer is not None
        for tp in self._partitions:
            self._consumer.seek(tp, self.table.position(tp.partition))
        # Writers only wait for outcomes of changes produced after they started waiting.
        await self._consumer.seek_to_end(self._dead_letters)

    def _move_table_aside(self) -> None:
        """Start the table again from the changelog's beginning, keeping the old one on disk.

        The old table is what `flagstream restore` needs to re-seed a broker that lost its
        data, so it is copied to `<data dir>/flags.lost-<unix time>` (the newest
        `KEPT_LOST_TABLES` are kept) before the table is wiped.
        """
        kept = self._keep_lost_table()
        log.warning(
            "the changelog is not the one this flag table was built from (the broker lost "
            "its data, or is another cluster): rebuilding the table from the changelog; "
            "the old table is kept in %s",
            kept,
        )
        self.table.wipe()
        for listener in self._rebuild_listeners:
            listener()
        metrics.TABLE_REBUILDS.inc()

    def _keep_lost_table(self) -> Path | None:
        if not self.table.environments():
            return None  # nothing worth keeping
        path = self.table.path
        self.table.close()
        try:
            kept = path.with_name(f"{path.name}.lost-{int(time.time())}")
            shutil.copytree(path, kept, dirs_exist_ok=True)
            for old in sorted(path.parent.glob(f"{path.name}.lost-*"))[:-KEPT_LOST_TABLES]:
                shutil.rmtree(old, ignore_errors=True)
            return kept
        except OSError as exc:
            log.error("could not keep the old flag table: %s", exc)
            return None
        finally:
            self.table.open()

    async def _same_log(self, timeout_s: float = 10.0) -> bool:
        """Whether the record before each stored position is the one the table applied.

        Read with a consumer of its own, so the tail's positions are left alone.
        """
        expected = {
            tp: (self.table.position(tp.partition) - 1, self.table.last_fingerprint(tp.partition))
            for tp in self._partitions
            if self.table.position(tp.partition) > 0
        }
        if not expected:
            return True
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
        )
        await asyncio.wait_for(consumer.start(), timeout_s)
        try:
            consumer.assign(list(expected))
            ends = await asyncio.wait_for(consumer.end_offsets(list(expected)), timeout_s)
            if any(ends[tp] == 0 for tp in expected):
                return False  # an empty partition: short end offsets are never zero for a real log
            for tp, (offset, _) in expected.items():
                consumer.seek(tp, offset)
            found: dict[TopicPartition, tuple[int, str]] = {}
            deadline = time.monotonic() + timeout_s
            while len(found) < len(expected) and time.monotonic() < deadline:
                try:
                    batches = await consumer.getmany(*expected, timeout_ms=200, max_records=1)
                except KafkaError:  # out of range: that offset is not in this log
                    return False
                for tp, records in batches.items():
                    if records and tp not in found:
                        found[tp] = (
                            records[0].offset,
                            fingerprint(records[0].key, records[0].value),
                        )
            return all(found.get(tp) == want for tp, want in expected.items())
        finally:
            await asyncio.wait_for(consumer.stop(), STOP_TIMEOUT_S)

    async def _catch_up(self) -> None:
        started = time.monotonic()
        await self.sync(range(self.settings.flag_change_partitions))
        self.ready.set()
        self.writable.set()
        metrics.READY.set(1)
        log.info(
            "flag table caught up in %.2fs: %d environments",
            time.monotonic() - started,
            len(self.table.environments()),
        )

    async def sync(self, partitions: Iterable[int]) -> None:
        """Return once every changelog record written before this call has been applied."""
        sent = [await self._send_fence(p) for p in partitions]
        for partition, offset in sent:
            await self.wait_applied(partition, offset)

    async def _send_fence(self, partition: int) -> tuple[int, int]:
        """Append a fence to `partition`; (partition, offset) once the broker has it.

        Retried: the first produce to a partition of a topic re-created on a broker that lost
        its data can fail once (Tansu finds a record a client sent before the topic existed).
        """
        assert self._producer is not None
        for attempt in range(1, FENCE_ATTEMPTS + 1):
            try:
                # A fence is unique, so a restarted worker can recognise the last one it read.
                metadata = await self._producer.send_and_wait(
                    FLAGS_CHANGELOG, os.urandom(8), key=FENCE_KEY, partition=partition
                )
                return metadata.partition, metadata.offset
            except KafkaError as exc:
                if attempt == FENCE_ATTEMPTS:
                    raise
                log.warning("fence on %s/%d failed (%r): retrying", FLAGS_CHANGELOG, partition, exc)
                await asyncio.sleep(0.1 * attempt)
        raise AssertionError("unreachable")

    # -- the broker: reachable, lost, back -------------------------------------------------

    def _set_broker_state(self, state: BrokerState) -> None:
        if state is not self.broker_state:
            # One template per state: the log's repeat limit (app.infra.log_limit) keys on it.
            if state is BrokerState.REACHABLE:
                log.info("broker %s reachable: writes accepted", self.settings.bootstrap)
            elif state is BrokerState.UNREACHABLE:
                log.warning(
                    "broker %s unreachable: serving last known flags, refusing writes",
                    self.settings.bootstrap,
                )
            else:
                log.warning("broker %s back: checking its changelog", self.settings.bootstrap)
        self.broker_state = state
        metrics.BROKER_REACHABLE.set(0 if state is BrokerState.UNREACHABLE else 1)
        if state is not BrokerState.REACHABLE:
            self.writable.clear()

    @Service.task
    async def _watch_broker(self) -> None:
        """Probe the broker every `PROBE_INTERVAL_S`; recover the table when it comes back."""
        await self.ready.wait()
        while not self.should_stop:
            await self.sleep(PROBE_INTERVAL_S)
            topics = await self._probe()
            if topics is None:
                self._set_broker_state(BrokerState.UNREACHABLE)
                continue
            if await self._steady(topics):
                continue
            self._set_broker_state(BrokerState.RECOVERING)
            try:
                await asyncio.wait_for(self.recover(), RECOVER_TIMEOUT_S)
            except (TimeoutError, KafkaError, OSError) as exc:
                log.warning("recovery after the broker came back failed (%r): retrying", exc)

    async def _steady(self, topics: set[str]) -> bool:
        """Whether nothing happened since the last probe that calls for `recover()`."""
        expected = {spec.name for spec in topic_specs(self.settings)}
        if self.broker_state is not BrokerState.REACHABLE or not expected <= topics:
            return False
        return not await self._log_may_have_changed()

    async def _probe(self) -> set[str] | None:
        """The broker's topics, or None when it does not answer within `PROBE_TIMEOUT_S`."""
        assert self._admin is not None
        try:
            return set(await asyncio.wait_for(self._admin.list_topics(), PROBE_TIMEOUT_S))
        except (TimeoutError, KafkaError, OSError):
            return None

    async def _log_may_have_changed(self) -> bool:
        """Whether a changelog partition now ends before the table's position.

        Cheap (one ListOffsets) and a superset of the real cases: Tansu may report an end short
        of the last record, which `recover()` then finds to be the same log.
        """
        assert self._consumer is not None
        try:
            ends = await asyncio.wait_for(
                self._consumer.end_offsets(self._partitions), PROBE_TIMEOUT_S
            )
        except (TimeoutError, KafkaError, OSError):
            return False  # the next probe decides
        short = {
            tp.partition: ends[tp]
            for tp in self._partitions
            if ends.get(tp, 0) < self.table.position(tp.partition)
        }
        if not short or short == self._short_ends_checked:
            return False
        self._short_ends_checked = short
        return True

    async def recover(self) -> None:
        """Make this worker whole again after its broker came back; then accept writes.

        The entry point for the broker's return, in every order of events: re-create the
        topics it lacks, check the changelog is the one the table was built from (else move
        the table aside and rebuild it from the new log, rather than serve or decide on flags
        the new log contradicts), re-read its fences, and only then let writes out.
        """
        await ensure_topics(self.settings)
        async with self._table_lock:
            if not await self._same_log():
                self.ready.clear()
                metrics.READY.set(0)
                self._move_table_aside()
            await self._seek_to_table()
        await self.sync(range(self.settings.flag_change_partitions))
        self.ready.set()
        metrics.READY.set(1)
        self._set_broker_state(BrokerState.REACHABLE)
        self.writable.set()
        log.info(
            "flag table agrees with the broker again: %d environments",
            len(self.table.environments()),
        )

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

    @Service.task
    async def _tail(self) -> None:
        assert self._consumer is not None
        while not self.should_stop:
            async with self._table_lock:
                try:
                    batches = await self._consumer.getmany(timeout_ms=200, max_records=2000)
                except KafkaError as exc:
                    # Out of range: the broker's log is not the one the table follows. Stop
                    # reading until the watch has checked it (`recover`).
                    self._set_broker_state(BrokerState.RECOVERING)
                    log.warning("the changelog cannot be read on (%r): checking it", exc)
                    batches = {}
                for tp, records in batches.items():
                    if tp.topic == DEAD_LETTERS:
                        self._read_dead_letters(records)
                    else:
                        self._apply(tp.partition, records)
            if not batches:
                if self.broker_state is BrokerState.RECOVERING:
                    await self.sleep(PROBE_INTERVAL_S)
                continue
            async with self._progress:
                self._progress.notify_all()

    def _apply(self, partition: int, records: Iterable[Any]) -> None:
        for record in records:
            change = _decode_changelog(record.key, record.value)
            mark = fingerprint(record.key, record.value)
            if change is None:
                self.table.apply(partition, record.offset, None, mark)
                continue
            fresh = self.table.apply(partition, record.offset, change, mark)
            metrics.CHANGELOG_RECORDS.labels("applied" if fresh else "skipped").inc()
            if fresh and self.ready.is_set():
                metrics.PROPAGATION_SECONDS.observe(max(0.0, time.time() - change.produced_at))
            self.outcomes.resolve(change.change_id, self._outcome(change, fresh))

    def _outcome(self, change: AppliedChange, fresh: bool) -> AppliedChange | dict[str, Any]:
        """What the writer of `change` learns: its applied version, or that it was lost.

        A record that is not fresh either repeats a change already applied (a redelivery:
        the writer gets that change) or carries a sequence number another decision took
        first (two deciders during a rebalance): that change is not in the table, and its
        writer must hear so rather than get a version that is not there.
        """
        if fresh:
            return change
        applied = self.table.applied(change.environment, change.change_id)
        if applied is not None:
            return applied
        reason = "a concurrent decision took this change's sequence number; retry the write"
        current = self.table.get(change.environment, change.flag)
        return {
            "code": "VERSION_CONFLICT",
            "reason": reason,
            "change_id": change.change_id,
            "current_version": current.version if current else 0,
        }

    def _read_dead_letters(self, records: Iterable[Any]) -> None:
        for record in records:
            try:
                letter = json.loads(record.value)
                self.outcomes.resolve(letter.get("change_id"), letter)
            except (ValueError, TypeError, AttributeError):
                log.warning("unreadable dead letter at offset %s", record.offset)


async def _bounded_stop(stopping: Awaitable[None]) -> None:
    """Wait for a Kafka client to stop, at most `STOP_TIMEOUT_S`."""
    try:
        await asyncio.wait_for(stopping, STOP_TIMEOUT_S)
    except (TimeoutError, KafkaError, OSError) as exc:
        log.warning("a Kafka client did not stop within %.0fs: %r", STOP_TIMEOUT_S, exc)


def fingerprint(key: bytes | None, value: bytes | None) -> str:
    """A short digest of a changelog record, to recognise it after a restart."""
    return hashlib.blake2b((key or b"") + b"\0" + (value or b""), digest_size=8).hexdigest()


def _decode_changelog(key: bytes | None, value: bytes | None) -> AppliedChange | None:
    """The change a changelog record holds; None for fences and (logged) undecodable records."""
    if key == FENCE_KEY:
        metrics.CHANGELOG_RECORDS.labels("fence").inc()
        return None
    try:
        return AppliedChange.from_json(json.loads(value or b""))
    except (ValueError, TypeError, KeyError) as exc:
        # Only our agent writes here; a bad record is a bug or a foreign writer. Skip it loudly
        # rather than stop every worker's table at it.
        metrics.CHANGELOG_RECORDS.labels("undecodable").inc()
        log.error("skipping undecodable changelog record: %s", exc)
        return None
