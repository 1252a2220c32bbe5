"""Every worker's copy of `experiment-stats`: the newest partial of each source partition.

Results are read on any worker, so each one tails the whole compacted topic (every partition,
no consumer group: `assign`, seek to the beginning, follow) and keeps in memory the newest
`Partial` per (environment, experiment, source partition) and the newest `Progress` per source
partition. A result merges an experiment's partials when it is read (app/experiments/report.py).

A partial is newer than the kept one when it covers more of its sources: one whose offsets are
all at or below the kept one's is a stale copy (compaction has not removed it yet, or a slow
publisher) and is ignored. A record that is neither is handed to `on_rejected` (a dead letter)
and counted; the feed goes on. Memory is bounded: at most `MAX_ENVIRONMENTS` environments and
`MAX_EXPERIMENTS` experiments per environment; partials beyond are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from mode import Service

from app.experiments.partials import Partial, Progress, decode_stats_record
from app.infra.consumer_lag import ReadPositions
from app.infra.fetch_wait import LOOP_WAKE_MS, quiet_poll_ms
from app.infra.kafka_security import kafka_client_options
from app.infra.metrics import Metrics
from app.infra.records import Rejection
from app.infra.settings import Settings
from app.infra.shutdown import stop_within
from app.infra.topics import Topics

__all__ = ["MAX_ENVIRONMENTS", "MAX_EXPERIMENTS", "ExperimentStatsFeed", "is_older"]

log = logging.getLogger(__name__)

MAX_ENVIRONMENTS: Final = 1000  # environments with partials kept per worker
MAX_EXPERIMENTS: Final = 1000  # experiments with partials kept per environment
UNREADABLE_PAUSE_S: Final = 1.0  # pause before fetching again after the broker refused

OnRejected = Callable[[Rejection, bytes | None, int, int], Awaitable[None]]
Listener = Callable[[str, str], None]


def is_older(partial: Partial, kept: Partial) -> bool:
    """Whether `partial` covers nothing `kept` does not: each of its offsets at or below."""
    return all(offset <= kept.offsets.get(source, -1) for source, offset in partial.offsets.items())


class ExperimentStatsFeed(Service):
    """The newest partials and progress of every source partition, read from the topic."""

    def __init__(
        self, settings: Settings, metrics: Metrics, on_rejected: OnRejected, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.on_rejected = on_rejected
        self._counted = metrics.experiment_stats_records
        self._lag = metrics.consumer_lag
        self._positions = ReadPositions()  # the next record to take, per partition
        # environment -> experiment -> source partition -> newest partial
        self._partials: dict[str, dict[str, dict[int, Partial]]] = {}
        self._progress: dict[int, Progress] = {}
        self._listeners: list[Listener] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._consumer_ready = asyncio.Event()
        self._reread = False  # set by `forget`: seek to the beginning before the next fetch

    # -- reads -----------------------------------------------------------------------------

    def partials(self, environment: str, experiment: str) -> list[Partial]:
        """The experiment's newest partial of each source partition, by partition."""
        by_partition = self._partials.get(environment, {}).get(experiment, {})
        return [by_partition[p] for p in sorted(by_partition)]

    def experiments(self, environment: str) -> list[str]:
        """The experiments of the environment that have partials, sorted."""
        return sorted(self._partials.get(environment, {}))

    def environments(self) -> list[str]:
        """The environments that have partials, sorted."""
        return sorted(self._partials)

    def progress(self) -> dict[int, Progress]:
        """The newest progress of each source partition (a copy)."""
        return dict(self._progress)

    def listen(self, callback: Listener) -> None:
        """Call `callback(environment, experiment)` after each change of one of its partials."""
        self._listeners.append(callback)

    def forget(self) -> None:
        """Drop every partial and progress and read the topic again from its beginning.

        A `FlagReplication.on_rebuild` listener: the broker lost its data, so what is kept came
        from a log that no longer exists, and the new log's offsets start again below the kept
        ones (its partials would all look older and be ignored)."""
        self._partials.clear()
        self._progress.clear()
        self._reread = True

    # -- the record path -------------------------------------------------------------------

    async def take(self, raw: bytes | None, partition: int, offset: int) -> None:
        """Keep one record of the topic (its value), or hand it on as rejected."""
        decoded = decode_stats_record(raw)
        if isinstance(decoded, Rejection):
            self._counted.labels("rejected").inc()
            try:
                await self.on_rejected(decoded, raw, partition, offset)
            except Exception:  # a dead letter that cannot be sent must not stop the feed
                log.exception(
                    "experiment-stats record %d/%d: rejection not sent", partition, offset
                )
            return
        if isinstance(decoded, Progress):
            self._keep_progress(decoded)
        else:
            self._keep_partial(decoded)

    def _keep_progress(self, progress: Progress) -> None:
        kept = self._progress.get(progress.partition)
        if kept is not None and progress.at < kept.at:
            self._counted.labels("older").inc()
            return
        self._progress[progress.partition] = progress
        self._counted.labels("kept").inc()

    def _keep_partial(self, partial: Partial) -> None:
        experiments = self._partials.get(partial.environment)
        if experiments is None:
            if len(self._partials) >= MAX_ENVIRONMENTS:
                self._counted.labels("dropped").inc()
                return
            experiments = self._partials[partial.environment] = {}
        by_partition = experiments.get(partial.experiment)
        if by_partition is None:
            if len(experiments) >= MAX_EXPERIMENTS:
                self._counted.labels("dropped").inc()
                return
            by_partition = experiments[partial.experiment] = {}
        kept = by_partition.get(partial.partition)
        if kept is not None and is_older(partial, kept):
            self._counted.labels("older").inc()
            return
        by_partition[partial.partition] = partial
        self._counted.labels("kept").inc()
        self._tell(partial.environment, partial.experiment)

    def _tell(self, environment: str, experiment: str) -> None:
        for listener in self._listeners:
            try:
                listener(environment, experiment)
            except Exception:  # one listener's bug must not stop the feed or the others
                log.exception("experiment-stats listener failed on %s/%s", environment, experiment)

    # -- the service -----------------------------------------------------------------------

    async def on_start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap,
            **kafka_client_options(self.settings),
            group_id=None,  # every worker reads every partition
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # a position the topic lost: read what it has
            # Partials and progress come now and then, a few records at a time, and people
            # read the results: every fetch waits the quiet poll at the broker, which answers
            # when records come (Kafka at once, the embedded broker within about half of it;
            # a catch-up's fetches find data and return at once). Paced from a short wait
            # instead, each progress record (every 10 s) cost ~7 fetches.
            fetch_max_wait_ms=quiet_poll_ms(self.settings.background_poll_ms),
        )
        await self._consumer.start()
        # The topic's partition count is the sources' (app.infra.topics.topic_specs).
        topic = Topics.of(self.settings).experiment_stats
        partitions = [TopicPartition(topic, p) for p in range(self.settings.exposure_partitions)]
        self._consumer.assign(partitions)
        self._lag.watch("experiment-stats", self._consumer, self._positions)
        await self._read_from_beginning()
        self._consumer_ready.set()

    async def _read_from_beginning(self) -> None:
        """Seek every assigned partition to its first record, and know where that is (the
        lag counts from there before the first fetch returns)."""
        if self._consumer is None:
            return
        partitions = self._consumer.assignment()
        await self._consumer.seek_to_beginning(*partitions)
        for tp in partitions:
            self._positions.start_at(tp, await self._consumer.position(tp))

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await stop_within(self._consumer.stop())

    @Service.task
    async def _follow(self) -> None:
        await self._consumer_ready.wait()
        if self._consumer is None:
            return
        while not self.should_stop:
            try:
                if self._reread:
                    self._reread = False
                    await self._read_from_beginning()
                batches = await self._consumer.getmany(timeout_ms=LOOP_WAKE_MS, max_records=1000)
            except KafkaError as exc:
                log.warning("experiment-stats cannot be read (%r): retrying", exc)
                await self.sleep(UNREADABLE_PAUSE_S)
                continue
            for tp, records in batches.items():
                for record in records:
                    await self.take(record.value, tp.partition, record.offset)
                    self._positions.handled(tp.topic, tp.partition, record.offset)
