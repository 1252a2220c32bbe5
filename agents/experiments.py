"""The attribution service: folds `exposures` and `metric-events` into experiment totals.

Read top to bottom. A consumer group (`<app id>-experiments`) over both topics with the range
assignor, so a member owns the same partition numbers of both and a subject's exposures and
events meet in one member. For each fetched batch of source partition p:

    decode          each record, or a dead letter (app/experiments/sources.py)
    fold            over p's state: skip what p's stored offsets say is folded (a redelivery)
    log             the changed values and then the offsets to `experiment-state` partition p,
                    and wait for the broker's ack
    write           the state and the offsets locally, in one RocksDB batch
    publish         at most every FLAGSTREAM_STATS_PUBLISH_MS, each changed experiment's totals
                    of p and p's progress to `experiment-stats` (app/experiments/partials.py)

Exactly once, whatever fails: the stored offsets, not the group's commits, say where p
resumes, and they are written with the state they produced. A worker killed after the log's
ack and before its local write, or one that gets p from another worker, first catches p up
from `experiment-state` (`catch_up`): it produces a fence record to p's changelog and reads
until it meets it (the embedded broker misreports end offsets, so no end offset is trusted),
applying the values newer than its own; a batch half logged by a dying worker is handled by
the fold (app/experiments/fold.py). Then it seeks both sources to the restored offsets.

Why a plain aiokafka consumer run as a Faust service, not a Faust agent: as for
agents/evaluations.py, a Faust stream costs ~90 us per record before the agent sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.structs import TopicPartition
from mode import Service

from agents.dead_letters import DeadLetterSender
from app.evaluation.live_flags import LiveFlags
from app.experiments.design import design_of
from app.experiments.fold import EventRecord, ExposureRecord, Folded, PartitionFold, Sourced
from app.experiments.partials import Partial, Progress, encode_partial, encode_progress
from app.experiments.sources import decode_exposure, decode_metric_event
from app.experiments.stats import MetricKind
from app.infra.consumer_lag import ReadPositions
from app.infra.fetch_wait import pace_when_idle, quiet_poll_ms
from app.infra.kafka_security import kafka_client_options
from app.infra.metrics import Metrics
from app.infra.records import Rejection
from app.infra.settings import Settings
from app.infra.shutdown import stop_group_member
from app.infra.topics import Topics, partition_of
from tables.partition_state import PartitionState
from tables.replication import FlagReplication

__all__ = ["ExperimentAttribution", "ExperimentMetrics"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")
# The sources and the state changelog by role, not topic name: these key the stored offsets,
# the progress in `experiment-stats` and metric labels, the same in every deployment.
SOURCES = ("exposures", "metric-events")
STATE = "experiment-state"
DECODERS = {"exposures": decode_exposure, "metric-events": decode_metric_event}
MAX_POLL_RECORDS = 2000  # records per fetch (bounds a batch's changelog and its latency)
FOLD_CHUNK = 500  # records folded and logged at once
FENCE_KEY = b"f"  # the changelog record a restoring owner waits for
CATCH_UP_TIMEOUT_S = 60.0  # longest a catch-up waits for its own fence
PROGRESS_EVERY_S = 10.0  # an unchanged partition's progress is said again this often


class ExperimentMetrics:
    """(environment, experiment) -> the metrics its live flag declares, None without one.

    Recomputed when the environment's flags change (its etag), so a metric declared mid-run
    is folded from then on (the fold rebuilds the totals it changes).
    """

    def __init__(self, live_flags: LiveFlags) -> None:
        self.live_flags = live_flags
        self._by_environment: dict[str, tuple[str, dict[str, dict[str, MetricKind]]]] = {}

    def __call__(self, environment: str, experiment: str) -> Mapping[str, MetricKind] | None:
        etag = self.live_flags.etag(environment)
        known = self._by_environment.get(environment)
        if known is None or known[0] != etag:
            designs = {}
            for live in self.live_flags.environment(environment).values():
                design = None if live.flag is None else design_of(live.flag, live.version)
                if design is not None:
                    designs[design.experiment] = design.kinds
            known = self._by_environment[environment] = (etag, designs)
        return known[1].get(experiment)


class ExperimentAttribution(Service):
    """Owns a share of the source partitions and keeps their experiment totals."""

    def __init__(
        self,
        settings: Settings,
        replication: FlagReplication,
        live_flags: LiveFlags,
        metrics: Metrics,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.topics = topics = Topics.of(settings)
        self.source_topics = {"exposures": topics.exposures, "metric-events": topics.metric_events}
        self.source_of = {topic: source for source, topic in self.source_topics.items()}
        self.replication = replication
        self.metrics = metrics
        self.store = PartitionState(settings.data_dir / "experiments")
        self.fold = PartitionFold(
            self.store,
            ExperimentMetrics(live_flags),
            settings.attribution_window_s,
            settings.series_window_s,
            max(1, settings.series_retention_s // settings.series_window_s),
        )
        self.dead_letters = {
            source: DeadLetterSender(topic, self._send_dead_letter, metrics)
            for source, topic in self.source_topics.items()
        }
        self.consumer: AIOKafkaConsumer | None = None
        self.positions = ReadPositions()  # the next source record to fold, per partition
        self.reader: AIOKafkaConsumer | None = None  # reads `experiment-state` to catch up
        self.producer: AIOKafkaProducer | None = None
        self.owned: set[int] = set()
        self.partitions: dict[str, int] = {}  # partition count per source topic
        self.changed: dict[int, set[tuple[str, str]]] = {}  # experiments to publish per p
        self.lock = asyncio.Lock()  # a batch and a rebalance never interleave
        self.published_at = 0.0  # monotonic
        # Set when there may be something to publish (changed totals, moved progress): an
        # idle attribution sleeps instead of checking ten times a second.
        self.publish_wanted = asyncio.Event()
        # The progress last published per partition: (offsets, behind, unix seconds).
        self.progress: dict[int, tuple[dict[str, int], int, float]] = {}

    async def on_start(self) -> None:
        self.store.open()
        common = {
            "bootstrap_servers": self.settings.bootstrap,
            **kafka_client_options(self.settings),
        }
        self.producer = AIOKafkaProducer(
            **common,
            acks="all",
            linger_ms=2,
            max_batch_size=1024 * 1024,
            enable_idempotence=self.settings.producer_idempotence,
        )
        self.consumer = AIOKafkaConsumer(
            **common,
            group_id=f"{self.settings.app_id}-experiments",
            partition_assignment_strategy=(RangePartitionAssignor,),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.settings.attribution_fetch_wait_ms,
            max_poll_records=MAX_POLL_RECORDS,
            rebalance_timeout_ms=int(self.settings.rebalance_timeout_s * 1000),
            session_timeout_ms=int(self.settings.session_timeout_s * 1000),
            heartbeat_interval_ms=int(self.settings.heartbeat_s * 1000),
        )
        self.reader = AIOKafkaConsumer(
            **common,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
        )
        await self.producer.start()
        await self.consumer.start()
        self.metrics.consumer_lag.watch("experiments", self.consumer, self.positions)
        await self.reader.start()
        pace_when_idle(
            self.reader, self.settings.fetch_max_wait_ms, self.settings.background_poll_ms
        )
        # The sources too: on the embedded broker each fetch waits its full 200 ms, so an
        # idle attribution fetched 5 times a second. Paced to the quiet poll (>= 1 s): no
        # flag change or evaluation waits on it, an exposure after silence is counted up to
        # ~0.5 s later on the embedded broker (at once on Kafka, which answers when data comes).
        pace_when_idle(
            self.consumer,
            self.settings.attribution_fetch_wait_ms,
            quiet_poll_ms(self.settings.background_poll_ms),
        )

    async def on_stop(self) -> None:
        if self.consumer is not None:
            # Bounded: mid-rebalance a plain stop waits for the join and sync in flight.
            await stop_group_member(self.consumer)
        if self.reader is not None:
            await self.reader.stop()
        if self.producer is not None:
            await self.publish()
            await self.producer.stop()
        self.store.close()

    @Service.task
    async def _fold_forever(self) -> None:
        # The metrics an experiment declares come from the flag table: join once it has
        # caught up, or the first batches would be folded without them.
        await self.replication.ready.wait()
        consumer = _started(self.consumer)
        consumer.subscribe(list(self.source_topics.values()), listener=_Rebalance(self))
        while not self.should_stop:
            batches = await consumer.getmany(timeout_ms=1000)
            if batches:  # records moved the progress, even those only dead-lettered
                self.publish_wanted.set()
            by_partition: dict[int, list[Sourced]] = {}
            for tp, records in batches.items():
                by_partition.setdefault(tp.partition, [])
                source = self.source_of[tp.topic]
                for record in records:
                    decoded = self._placed(DECODERS[source](record.value), tp)
                    if isinstance(decoded, Rejection):
                        await self.dead_letters[source].park(
                            decoded, record.value, tp.partition, record.offset
                        )
                        self.metrics.attribution_records.labels(source, "malformed").inc()
                        continue
                    by_partition[tp.partition].append(Sourced(source, record.offset, decoded))
            async with self.lock:
                # Partitions fold side by side: one's changelog ack is awaited while the next
                # folds, and the producer sends their batches in one request.
                await asyncio.gather(
                    *(
                        self.fold_partition(partition, items)
                        for partition, items in by_partition.items()
                        if partition in self.owned  # not revoked while the fetch was decoded
                    )
                )
            for tp, records in batches.items():
                if records:
                    self.positions.handled(tp.topic, tp.partition, records[-1].offset)

    def _placed(
        self, decoded: ExposureRecord | EventRecord | Rejection, tp: TopicPartition
    ) -> ExposureRecord | EventRecord | Rejection:
        """The record, or a rejection when it is not on its targeting key's partition: its
        subject's exposures and events would not meet (a producer that keys records by
        something else, or partitions them other than murmur2, as librdkafka's default)."""
        if isinstance(decoded, Rejection):
            return decoded
        partitions = self.partitions.get(tp.topic)
        if partitions is None:
            found = _started(self.consumer).partitions_for_topic(tp.topic)
            partitions = self.partitions[tp.topic] = len(found or ()) or tp.partition + 1
        owner = partition_of(decoded.subject.encode(), partitions)
        if owner == tp.partition:
            return decoded
        return Rejection.malformed(
            f"on partition {tp.partition}, not {owner}: a record is keyed by its targeting key"
            " (murmur2, Kafka's default partitioner)",
            ("$.targeting_key", f"belongs on partition {owner}"),
        )

    async def fold_partition(self, partition: int, items: list[Sourced]) -> None:
        """Fold, log, then write a partition's records, a chunk at a time."""
        for start in range(0, len(items), FOLD_CHUNK):
            chunk = items[start : start + FOLD_CHUNK]
            started = time.perf_counter()
            offsets = self.fold.offsets(partition, SOURCES)
            folded = self.fold.fold(partition, chunk)
            changelog_next = await self._log(partition, folded)
            self.fold.commit(folded, {STATE: changelog_next})
            self.note_changed(partition, folded.experiments)
            counts: dict[tuple[str, str], int] = {}
            for item in chunk:
                outcome = "folded" if item.offset >= offsets[item.source] else "redelivered"
                counts[(item.source, outcome)] = counts.get((item.source, outcome), 0) + 1
            for labels, count in counts.items():
                self.metrics.attribution_records.labels(*labels).inc(count)
            self.metrics.attribution_batch_seconds.observe(time.perf_counter() - started)

    async def _log(self, partition: int, folded: Folded) -> int:
        """Produce the batch's changelog records to partition p and wait for every ack;
        returns the changelog offset after them."""
        producer = _started(self.producer)
        deliveries = []
        batch = producer.create_batch()
        count = 0
        for key, value in folded.changelog():
            if batch.append(key=key, value=value, timestamp=None) is None:
                deliveries.append(
                    (
                        await producer.send_batch(
                            batch, self.topics.experiment_state, partition=partition
                        ),
                        count,
                    )
                )
                batch, count = producer.create_batch(), 0
                batch.append(key=key, value=value, timestamp=None)
            count += 1
        if count:
            deliveries.append(
                (
                    await producer.send_batch(
                        batch, self.topics.experiment_state, partition=partition
                    ),
                    count,
                )
            )
        next_offset = self.store.offset(partition, STATE)
        for delivery, records in deliveries:
            metadata = await delivery
            next_offset = metadata.offset + records
        return next_offset

    async def catch_up(self, partition: int) -> None:
        """Apply what `experiment-state` has of partition p beyond this worker's copy."""
        producer, reader = _started(self.producer), _started(self.reader)
        fence = os.urandom(16).hex().encode()
        topic = self.topics.experiment_state
        await producer.send_and_wait(topic, fence, key=FENCE_KEY, partition=partition)
        tp = TopicPartition(topic, partition)
        reader.assign([tp])
        reader.seek(tp, self.store.offset(partition, STATE))
        applied = 0
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}/{partition}: the fence never came back")
            records = (await reader.getmany(tp, timeout_ms=500)).get(tp, [])
            met = next((r for r in records if r.key == FENCE_KEY and r.value == fence), None)
            upto = records if met is None else [r for r in records if r.offset < met.offset]
            applied += self.fold.restore(
                partition, [(r.key, r.value) for r in upto if r.key is not None and r.value]
            )
            if met is not None:
                break
        # Read only while catching up: left assigned, the reader fetched a few times a second
        # for as long as the worker ran.
        reader.unsubscribe()
        if applied:
            self.note_changed(partition, self.fold.rebuild(partition))
        self.store.apply(partition, {}, {STATE: met.offset + 1})
        outcome = "restored" if applied else "current"
        self.metrics.attribution_restores.labels(outcome).inc()
        log.info("experiments partition %d: %s from %s", partition, outcome, topic)

    async def assigned(self, partitions: set[int]) -> None:
        """Catch the new partitions up, then fetch their sources from the stored offsets."""
        consumer = _started(self.consumer)
        async with self.lock:
            for partition in sorted(partitions):
                await self.catch_up(partition)
                for source, offset in self.fold.offsets(partition, SOURCES).items():
                    tp = TopicPartition(self.source_topics[source], partition)
                    consumer.seek(tp, offset)
                    self.positions.start_at(tp, offset)
            self.owned = set(partitions)
            self.metrics.attribution_partitions.set(len(self.owned))

    async def revoked(self) -> None:
        """Stop owning every partition once the batch in hand is written; publish first."""
        async with self.lock:
            await self.publish()
            self.owned = set()
            self.metrics.attribution_partitions.set(0)

    def note_changed(self, partition: int, experiments: Iterable[tuple[str, str]]) -> None:
        """Mark experiments of a partition to publish, and wake the publisher."""
        self.changed.setdefault(partition, set()).update(experiments)
        self.publish_wanted.set()

    @Service.task
    async def _publish_when_due(self) -> None:
        """Publish once something changed, at most every FLAGSTREAM_STATS_PUBLISH_MS, and
        at least every PROGRESS_EVERY_S (an unchanged partition's progress is said again)."""
        while not self.should_stop:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.publish_wanted.wait(), PROGRESS_EVERY_S)
            pause = self.published_at + self.settings.stats_publish_ms / 1000 - time.monotonic()
            if pause > 0:
                await self.sleep(pause)  # what changes meanwhile goes out in this publish
            self.publish_wanted.clear()
            self.published_at = time.monotonic()
            await self.publish()

    @Service.timer(PROGRESS_EVERY_S)
    async def _follow_declarations(self) -> None:
        """Totals of experiments whose metric declarations changed are rebuilt without
        waiting for their partition's next record."""
        async with self.lock:
            for partition in sorted(self.owned):
                rebuilt = self.fold.refresh(partition)
                if rebuilt:
                    self.note_changed(partition, rebuilt)

    async def publish(self) -> None:
        """Each changed experiment's totals of each owned partition, and each one's progress."""
        producer, consumer = self.producer, self.consumer
        if producer is None or consumer is None:
            return
        now = time.time()
        for partition in sorted(self.owned):
            for environment, experiment in sorted(self.changed.pop(partition, ())):
                partial = Partial(
                    environment,
                    experiment,
                    partition,
                    self.fold.totals(partition, environment, experiment),
                    {
                        metric: MetricKind(kind)
                        for metric, kind in self.fold.declared(
                            partition, environment, experiment
                        ).items()
                    },
                    self.fold.offsets(partition, SOURCES),
                    now,
                )
                key, value = encode_partial(partial)
                await producer.send(self.topics.experiment_stats, value, key=key)
            offsets = self.fold.offsets(partition, SOURCES)
            behind = 0
            for source, offset in offsets.items():
                highwater = consumer.highwater(
                    TopicPartition(self.source_topics[source], partition)
                )
                behind += max(0, (highwater or 0) - offset)
            said = self.progress.get(partition)
            if said is None or said[:2] != (offsets, behind) or now - said[2] >= PROGRESS_EVERY_S:
                self.progress[partition] = (offsets, behind, now)
                key, value = encode_progress(Progress(partition, offsets, behind, now))
                await producer.send(self.topics.experiment_stats, value, key=key)

    async def _send_dead_letter(self, letter: bytes) -> None:
        await _started(self.producer).send(self.topics.dead_letters, letter)


def _started(part: _T | None) -> _T:
    if part is None:
        raise RuntimeError("the attribution service is not started")
    return part


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: ExperimentAttribution) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.service.revoked()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.service.assigned({tp.partition for tp in assigned})
