"""Topics are created explicitly: `metric-events` is co-partitioned with `exposures` (that a
targeting key lands on one partition number in both: tests/web/test_metric_events_api.py)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from app.infra.settings import Settings
from app.infra.topics import EXPOSURES, METRIC_EVENTS, ensure_topics


def partition_counts(brokers: str, topics: tuple[str, ...]) -> dict[str, int]:
    async def run() -> dict[str, int]:
        producer = AIOKafkaProducer(bootstrap_servers=brokers)
        await producer.start()
        try:
            return {topic: len(await producer.partitions_for(topic)) for topic in topics}
        finally:
            await producer.stop()

    return asyncio.run(run())


def test_metric_events_has_the_partition_count_of_exposures(
    broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not the broker's auto-created 4: the exposure setting, here 5, for both topics."""
    monkeypatch.setenv("FLAGSTREAM_BROKERS", broker)
    monkeypatch.setenv("FLAGSTREAM_EXPOSURE_PARTITIONS", "5")
    asyncio.run(ensure_topics(Settings.from_env()))
    counts = partition_counts(broker, (EXPOSURES, METRIC_EVENTS))
    assert counts == {EXPOSURES: 5, METRIC_EVENTS: 5}
