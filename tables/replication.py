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
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from mode import Service

from app import metrics
from app.outcomes import Outcomes
from app.records import AppliedChange
from app.settings import Settings
from app.topics import DEAD_LETTERS, FLAGS_CHANGELOG
from tables.flags import FlagTable

log = logging.getLogger(__name__)

FENCE_KEY = b"__fence__"
READY_WAIT_S = 5.0  # how long a request to a worker still recovering waits for it


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

    async def on_start(self) -> None:
        self.table.open()
        self._producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap, acks="all")
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
        )
        await self._producer.start()
        await self._consumer.start()
        if not await self._same_log():
            log.warning(
                "the changelog is not the one this flag table was built from (the broker lost "
                "its data, or is another cluster): rebuilding the table from the changelog"
            )
            self.table.wipe()
        dead_letters = TopicPartition(DEAD_LETTERS, 0)
        self._consumer.assign([*self._partitions, dead_letters])
        for tp in self._partitions:
            self._consumer.seek(tp, self.table.position(tp.partition))
        # Writers only wait for outcomes of changes produced after they started waiting.
        await self._consumer.seek_to_end(dead_letters)
        self.add_future(self._catch_up())

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        self.table.close()

    async def _same_log(self, timeout_s: float = 10.0) -> bool:
        """Whether the record before each stored position is the one the table applied."""
        assert self._consumer is not None
        expected = {
            tp: (self.table.position(tp.partition) - 1, self.table.last_fingerprint(tp.partition))
            for tp in self._partitions
            if self.table.position(tp.partition) > 0
        }
        if not expected:
            return True
        self._consumer.assign(list(expected))
        ends = await self._consumer.end_offsets(list(expected))
        if any(ends[tp] == 0 for tp in expected):
            return False  # an empty partition: short end offsets are never zero for a real log
        for tp, (offset, _) in expected.items():
            self._consumer.seek(tp, offset)
        found: dict[TopicPartition, tuple[int, str]] = {}
        deadline = time.monotonic() + timeout_s
        while len(found) < len(expected) and time.monotonic() < deadline:
            batches = await self._consumer.getmany(*expected, timeout_ms=200, max_records=1)
            for tp, records in batches.items():
                if records and tp not in found:
                    found[tp] = (records[0].offset, fingerprint(records[0].key, records[0].value))
        return all(found.get(tp) == want for tp, want in expected.items())

    async def _catch_up(self) -> None:
        started = time.monotonic()
        await self.sync(range(self.settings.flag_change_partitions))
        self.ready.set()
        metrics.READY.set(1)
        log.info(
            "flag table caught up in %.2fs: %d environments",
            time.monotonic() - started,
            len(self.table.environments()),
        )

    async def sync(self, partitions: Iterable[int]) -> None:
        """Return once every changelog record written before this call has been applied."""
        assert self._producer is not None
        sent = [
            # A fence is unique, so a restarted worker can recognise the last one it read.
            await self._producer.send(FLAGS_CHANGELOG, os.urandom(8), key=FENCE_KEY, partition=p)
            for p in partitions
        ]
        for metadata in await asyncio.gather(*sent):
            await self.wait_applied(metadata.partition, metadata.offset)

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
            batches = await self._consumer.getmany(timeout_ms=200, max_records=2000)
            if not batches:
                continue
            for tp, records in batches.items():
                if tp.topic == DEAD_LETTERS:
                    self._read_dead_letters(records)
                else:
                    self._apply(tp.partition, records)
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
