"""Consumer lag per group and partition, computed at scrape time from what this worker read.

Lag is the end offset this worker has learned for a partition (the high watermark of its last
fetch response) minus the next offset it reads there, never below 0. Offsets, not record
timestamps: an idle topic's newest record is old without anything being pending, so an age says
nothing until the end is known anyway, and producer clocks differ. Offsets count the backlog.

The embedded broker (Tansu) answers ListOffsets with an end short of the last record: the
base offset of the last record batch + 1 (3 batches of 10 records: 21, not 30). A lag counted
from a committed offset against that end (what `kafka-consumer-groups.sh` does) reads -9 once
all is read. Its fetch responses carry the true high watermark (30), and that is the end used
here; the clamp at 0 still keeps a short end (any broker's) from showing a negative lag.

Groups are role names, not group ids, so the label set is bounded and the same on every
deployment: `flag-changes` (the deciding agent, Faust's consumer), `flag-changelog` (the flag
table), `evaluations`, `experiments` (attribution), `dead-letters` (the writers' outcomes) and
`experiment-stats` (the results feed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from aiokafka import TopicPartition
from faust.types import TP, ConsumerT
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["ConsumerLag", "FaustConsumer", "Positions", "ReadPositions", "TrackedConsumer"]

# The next offset this worker reads on a partition, None when it has not read there yet.
Positions = Callable[[TopicPartition], int | None]


class TrackedConsumer(Protocol):
    """What the lag needs of an aiokafka consumer: its partitions and their high watermarks."""

    def assignment(self) -> set[TopicPartition]: ...

    def highwater(self, partition: TopicPartition) -> int | None: ...


class ReadPositions:
    """A `Positions` a consumer loop keeps: the offset after the last record it handled, or
    where it was told to start (a seek), per partition."""

    def __init__(self) -> None:
        self._next: dict[TopicPartition, int] = {}

    def __call__(self, partition: TopicPartition) -> int | None:
        return self._next.get(partition)

    def handled(self, topic: str, partition: int, offset: int) -> None:
        """The record at `offset` is done: the next one to read is `offset + 1`."""
        self._next[TopicPartition(topic, partition)] = offset + 1

    def start_at(self, partition: TopicPartition, offset: int) -> None:
        """The consumer reads `partition` from `offset` next (after a seek)."""
        self._next[partition] = offset


class FaustConsumer:
    """A Faust consumer seen as a `TrackedConsumer` (its partitions are Faust `TP`s)."""

    def __init__(self, consumer: ConsumerT) -> None:
        self._consumer = consumer

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def highwater(self, partition: TopicPartition) -> int | None:
        end: int | None = self._consumer.highwater(TP(partition.topic, partition.partition))
        return end


def lag_of(end: int | None, position: int | None) -> int:
    """Records between `position` and `end`: 0 when either is unknown or the end is short.

    A position never learned means no fetch returned records there: this worker is at the end.
    """
    if end is None or position is None:
        return 0
    return max(0, end - position)


class ConsumerLag(Collector):
    """`flagstream_consumer_lag_records{group,topic,partition}` of the consumers it watches."""

    def __init__(self) -> None:
        self._watched: dict[str, tuple[TrackedConsumer, Positions]] = {}
        # The last position each (group, partition) reported: a consumer may forget its own
        # between reads (the evaluations clear theirs at each commit).
        self._last: dict[tuple[str, TopicPartition], int] = {}

    def watch(self, group: str, consumer: TrackedConsumer, positions: Positions) -> None:
        """Export the lag of `consumer`'s assigned partitions under `group` (a role name);
        watching a group again (a restarted consumer) replaces the one before."""
        self._watched[group] = (consumer, positions)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            "flagstream_consumer_lag_records",
            "Records of a partition this worker's consumer has not read yet: the high "
            "watermark of its last fetch minus its next offset, never below 0.",
            labels=["group", "topic", "partition"],
        )
        for group, (consumer, positions) in list(self._watched.items()):
            for tp in sorted(consumer.assignment()):
                records = lag_of(consumer.highwater(tp), self._position(group, tp, positions))
                lag.add_metric([group, tp.topic, str(tp.partition)], records)
        yield lag

    def _position(self, group: str, tp: TopicPartition, positions: Positions) -> int | None:
        position = positions(tp)
        if position is None:
            return self._last.get((group, tp))
        self._last[group, tp] = position
        return position
