"""The dead-letter reader against a real broker."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from app.control.dead_letters import DeadLetterReader
from app.control.outcomes import Outcomes
from app.infra.consumer_lag import ConsumerLag
from app.infra.settings import Settings
from app.infra.topics import Topics, ensure_topics
from tables.flags import FlagTable
from tests.conftest import produce


def test_moving_to_the_end_while_starting_waits_for_the_consumer(
    broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`move_to_end` (a step before writes reopen) may come while the reader starts.

    The reader's own "consumer ready" event was once named `_started`, mode's own flag, which
    mode sets before `on_start` runs: a move then met a consumer not yet started and failed.
    """
    monkeypatch.setenv("FLAGSTREAM_BROKERS", broker)
    settings = Settings.from_env()
    asyncio.run(ensure_topics(settings))
    produce(broker, Topics.of(settings).dead_letters, [(None, b"an old letter")])

    async def run() -> int:
        table = FlagTable(tmp_path, history_depth=5, stream_depth=5, change_id_depth=5)
        table.open()
        reader = DeadLetterReader(settings, Outcomes(table))
        starting = asyncio.create_task(reader.start())
        deadline = time.monotonic() + 30
        while reader._consumer is None:  # on_start has begun: the consumer is starting
            assert time.monotonic() < deadline, "the reader never began to start"
            await asyncio.sleep(0)  # a yield: let the start run to its first wait
        try:
            await asyncio.wait_for(reader.move_to_end(), 30)
            await starting
            assert reader._consumer is not None
            return int(await reader._consumer.position(reader._partition))
        finally:
            await reader.stop()
            table.close()

    assert asyncio.run(run()) == 1  # past the old letter


def test_the_start_s_move_to_the_end_does_not_wait_for_the_fetch_in_flight(
    broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writes of a starting worker open after `move_to_end`: at start the reader is at the
    end already, and a second seek waited for the position behind the fetch in flight (up to
    the quiet poll): every worker start took that long. Seen failing without the skip: 5.0 s
    (the fetch's whole wait)."""
    monkeypatch.setenv("FLAGSTREAM_BROKERS", broker)
    monkeypatch.setenv("FLAGSTREAM_BACKGROUND_POLL_MS", "5000")
    settings = Settings.from_env()
    asyncio.run(ensure_topics(settings))

    async def run() -> tuple[float, int]:
        table = FlagTable(tmp_path, history_depth=5, stream_depth=5, change_id_depth=5)
        table.open()
        reader = DeadLetterReader(settings, Outcomes(table))
        await reader.start()
        try:
            assert reader._consumer is not None
            fetcher = reader._consumer._fetcher
            deadline = time.monotonic() + 30
            while not fetcher._pending_tasks:  # a fetch is out, held by the broker
                assert time.monotonic() < deadline, "no fetch went out"
                await asyncio.sleep(0.01)
            started = time.monotonic()
            await reader.move_to_end()
            took = time.monotonic() - started
            # A later move (after a recovery) seeks again: a letter written since is skipped.
            letter = [(None, b"a newer letter")]
            before = await reader._consumer.position(reader._partition)
            await asyncio.to_thread(produce, broker, Topics.of(settings).dead_letters, letter)
            await asyncio.wait_for(reader.move_to_end(), 30)
            return took, int(await reader._consumer.position(reader._partition)) - before
        finally:
            await reader.stop()
            table.close()

    took, moved = asyncio.run(run())
    assert took < 1.0, f"the start's move to the end took {took:.2f}s"
    assert moved == 1  # past the newer letter


def test_the_reader_exports_its_lag_and_reads_zero_once_it_has_read_every_letter(
    broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAGSTREAM_BROKERS", broker)
    settings = Settings.from_env()
    asyncio.run(ensure_topics(settings))
    topic = Topics.of(settings).dead_letters
    lag = ConsumerLag()
    registry = CollectorRegistry()
    registry.register(lag)

    def exported() -> dict[str, float]:
        return {
            sample.labels["partition"]: sample.value
            for family in registry.collect()
            for sample in family.samples
            if sample.labels.get("group") == "dead-letters" and sample.labels["topic"] == topic
        }

    async def run() -> dict[str, float]:
        table = FlagTable(tmp_path, history_depth=5, stream_depth=5, change_id_depth=5)
        table.open()
        reader = DeadLetterReader(settings, Outcomes(table), lag)
        await reader.start()
        try:
            # Three batches: on the embedded broker the end it lists is the third's start + 1.
            for batch in range(3):
                letters = [(None, f"letter {batch}-{i}".encode()) for i in range(10)]
                offsets = await asyncio.to_thread(produce, broker, topic, letters)
            partition = TopicPartition(topic, 0)
            deadline = time.monotonic() + 30
            while reader._positions(partition) != offsets[-1] + 1:  # every letter read
                assert time.monotonic() < deadline, "the reader never read the letters"
                await asyncio.sleep(0.05)
            return exported()
        finally:
            await reader.stop()
            table.close()

    assert asyncio.run(run()) == {"0": 0.0}
