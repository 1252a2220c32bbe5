"""The stats feed against a real broker: it reads `experiment-stats` from the beginning and
follows it, keeps the newest partial per (environment, experiment, source partition) and the
newest progress per source partition, hands malformed records on and goes on."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from app.experiments import stats_feed
from app.experiments.attribution import VariantTotals
from app.experiments.partials import Partial, Progress, encode_partial, encode_progress
from app.experiments.stats_feed import ExperimentStatsFeed, is_older
from app.infra.metrics import Metrics
from app.infra.records import DeadLetterCode, Rejection
from app.infra.settings import Settings
from app.infra.topics import Topics, ensure_topics
from tests.app.experiments.test_report import partial

Rejected = tuple[Rejection, bytes | None, int, int]


def settings_for(broker: str) -> Settings:
    return dataclasses.replace(
        Settings.from_env(), brokers=(broker,), fetch_max_wait_ms=10, exposure_partitions=8
    )


class Running:
    """A started feed, what it rejected, what it told its listener, and a producer."""

    def __init__(self, broker: str) -> None:
        self.settings = settings_for(broker)
        self.registry = CollectorRegistry()
        self.rejected: list[Rejected] = []
        self.told: list[tuple[str, str]] = []
        self.feed = ExperimentStatsFeed(self.settings, Metrics(self.registry), self.reject)
        self.feed.listen(lambda env, exp: self.told.append((env, exp)))
        self.producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=5)

    async def reject(
        self, rejection: Rejection, raw: bytes | None, partition: int, offset: int
    ) -> None:
        self.rejected.append((rejection, raw, partition, offset))

    async def send(self, key: bytes | None, value: bytes | None) -> tuple[int, int]:
        topic = Topics.of(self.settings).experiment_stats
        metadata = await self.producer.send_and_wait(topic, value, key=key)
        return metadata.partition, metadata.offset

    async def send_partial(self, p: Partial) -> None:
        await self.send(*encode_partial(p))

    def counted(self, outcome: str) -> float:
        value = self.registry.get_sample_value(
            "flagstream_experiment_stats_records_total", {"outcome": outcome}
        )
        return value or 0.0


async def eventually(predicate: Callable[[], object], timeout_s: float = 20.0) -> None:
    """Wait on a condition (a loaded machine may be slow), polling the event loop."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def with_feed(broker: str, scenario: Callable[[Running], Awaitable[None]]) -> None:
    """Run `scenario` against a started feed and producer, then stop both."""

    async def run() -> None:
        await ensure_topics(settings_for(broker))
        running = Running(broker)
        await running.producer.start()
        await running.feed.start()
        try:
            await scenario(running)
        finally:
            await running.feed.stop()
            await running.producer.stop()

    asyncio.run(run())


def blue(subjects: int) -> dict[str, VariantTotals]:
    return {"blue": VariantTotals(subjects, subjects, 0, {}, {}, {})}


def unique() -> str:
    return "env-" + uuid.uuid4().hex[:8]


def test_the_newest_partial_of_each_source_partition_and_progress_are_kept(broker: str) -> None:
    async def scenario(running: Running) -> None:
        env = unique()
        first = partial(0, blue(3), environment=env, experiment="b-exp")
        second = partial(1, blue(4), environment=env, experiment="b-exp")
        other = partial(0, blue(9), environment=env, experiment="a-exp")
        newer = partial(0, blue(5), environment=env, experiment="b-exp", offsets={"exposures": 11})
        for p in (first, second, other, newer):
            await running.send_partial(p)
        await running.send(*encode_progress(Progress(6, {"exposures": 3}, 2, 100.0)))
        await running.send(*encode_progress(Progress(6, {"exposures": 8}, 0, 101.0)))
        feed = running.feed
        await eventually(lambda: 6 in feed.progress() and len(feed.partials(env, "b-exp")) == 2)
        await eventually(lambda: feed.partials(env, "b-exp")[0] == newer)
        assert feed.partials(env, "b-exp") == [newer, second]
        assert feed.partials(env, "a-exp") == [other]
        assert feed.experiments(env) == ["a-exp", "b-exp"]
        assert env in feed.environments()
        await eventually(lambda: feed.progress()[6].at == 101.0)
        assert feed.progress()[6] == Progress(6, {"exposures": 8}, 0, 101.0)
        assert [told for told in running.told if told[0] == env].count((env, "b-exp")) == 3

    with_feed(broker, scenario)


def test_an_older_partial_does_not_replace_a_newer_one(broker: str) -> None:
    async def scenario(running: Running) -> None:
        env = unique()
        newer = partial(2, blue(50), environment=env, offsets={"exposures": 40, "metric-events": 9})
        # Read after the newer one (a slow publisher, or compaction not done yet): at or below.
        older = partial(2, blue(20), environment=env, offsets={"exposures": 31, "metric-events": 9})
        same = partial(2, blue(21), environment=env, offsets={"exposures": 40, "metric-events": 9})
        marker = partial(3, blue(1), environment=env)
        for p in (newer, older, same, marker):
            await running.send_partial(p)
        feed = running.feed
        await eventually(lambda: len(feed.partials(env, "exp")) == 2)
        assert feed.partials(env, "exp") == [newer, marker]
        assert running.counted("older") >= 2
        assert running.told.count((env, "exp")) == 2  # newer and marker, not the older ones

    with_feed(broker, scenario)


def test_a_malformed_record_is_handed_on_and_the_feed_goes_on(broker: str) -> None:
    async def scenario(running: Running) -> None:
        env = unique()
        bad_partition, bad_offset = await running.send(b"k", b'{"schema": 1, "experiment": 7}')
        not_json_partition, not_json_offset = await running.send(b"k", b"\xff not json")
        await running.send(b"gone", None)  # a tombstone: no value
        after = partial(0, blue(2), environment=env)
        await running.send_partial(after)
        feed = running.feed
        await eventually(lambda: feed.partials(env, "exp") == [after])
        found = {(partition, offset): raw for _, raw, partition, offset in running.rejected}
        assert found[(bad_partition, bad_offset)] == b'{"schema": 1, "experiment": 7}'
        assert found[(not_json_partition, not_json_offset)] == b"\xff not json"
        assert None in found.values()
        assert all(r[0].code is DeadLetterCode.MALFORMED for r in running.rejected)
        assert running.counted("rejected") == len(running.rejected) >= 3

    with_feed(broker, scenario)


def test_a_new_feed_reads_the_topic_from_its_beginning(broker: str) -> None:
    async def scenario(running: Running) -> None:
        env = unique()
        kept = partial(5, blue(7), environment=env, experiment="late")
        await running.send_partial(kept)
        await eventually(lambda: running.feed.partials(env, "late") == [kept])
        again = ExperimentStatsFeed(running.settings, Metrics(CollectorRegistry()), _ignore)
        await again.start()
        try:
            await eventually(lambda: again.partials(env, "late") == [kept])
        finally:
            await again.stop()

    with_feed(broker, scenario)


def test_forgetting_drops_everything_and_reads_the_topic_again(broker: str) -> None:
    """What a worker does when the broker lost its data (`FlagReplication.on_rebuild`)."""

    async def scenario(running: Running) -> None:
        env = unique()
        kept = partial(1, blue(3), environment=env)
        await running.send_partial(kept)
        await running.send(*encode_progress(Progress(7, {"exposures": 1}, 0, 5.0)))
        feed = running.feed
        await eventually(lambda: feed.partials(env, "exp") == [kept] and 7 in feed.progress())
        feed.forget()
        assert feed.partials(env, "exp") == [] and feed.progress() == {}
        assert env not in feed.environments()
        # Read again from the beginning: without the seek, nothing would come back.
        await eventually(lambda: feed.partials(env, "exp") == [kept] and 7 in feed.progress())

    with_feed(broker, scenario)


def test_a_failing_dead_letter_or_listener_does_not_stop_the_feed() -> None:
    settings = settings_for("127.0.0.1:9")  # never connected: `take` is the record path

    async def broken(*_: object) -> None:
        raise RuntimeError("no producer")

    def broken_listener(environment: str, experiment: str) -> None:
        raise RuntimeError("bug")

    feed = ExperimentStatsFeed(settings, Metrics(CollectorRegistry()), broken)
    feed.listen(broken_listener)
    asyncio.run(feed.take(b"nonsense", 0, 1))
    asyncio.run(feed.take(encode_partial(partial(0, blue(1)))[1], 0, 2))
    assert feed.partials("development", "exp") == [partial(0, blue(1))]


def test_memory_is_bounded_beyond_it_partials_are_dropped_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stats_feed, "MAX_ENVIRONMENTS", 2)
    monkeypatch.setattr(stats_feed, "MAX_EXPERIMENTS", 2)
    registry = CollectorRegistry()
    feed = ExperimentStatsFeed(settings_for("127.0.0.1:9"), Metrics(registry), _ignore)
    named = [("e1", "x1"), ("e1", "x2"), ("e1", "x3"), ("e2", "x1"), ("e3", "x1"), ("e1", "x2")]
    for index, (env, exp) in enumerate(named):
        # The last: a known experiment still takes the partials of other source partitions.
        record = encode_partial(partial(index, blue(1), environment=env, experiment=exp))[1]
        asyncio.run(feed.take(record, 0, index))
    assert feed.environments() == ["e1", "e2"]
    assert feed.experiments("e1") == ["x1", "x2"]
    assert len(feed.partials("e1", "x2")) == 2
    dropped = registry.get_sample_value(
        "flagstream_experiment_stats_records_total", {"outcome": "dropped"}
    )
    assert dropped == 2


def test_older_means_no_offset_beyond_the_kept_ones() -> None:
    kept = partial(0, blue(1), offsets={"exposures": 10, "metric-events": 5})
    assert is_older(partial(0, blue(1), offsets={"exposures": 10, "metric-events": 5}), kept)
    assert is_older(partial(0, blue(1), offsets={"exposures": 3}), kept)
    assert not is_older(partial(0, blue(1), offsets={"exposures": 9, "metric-events": 6}), kept)
    assert not is_older(partial(0, blue(1), offsets={"exposures": 1, "experiment-x": 0}), kept)


async def _ignore(rejection: Rejection, raw: bytes | None, partition: int, offset: int) -> None:
    return None
