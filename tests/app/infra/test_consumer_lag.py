"""Consumer lag against the real embedded broker, whose end offsets are short of the log's.

A real aiokafka consumer reads part of a partition, then all of it; the collector must count
the records left, then exactly 0 (never negative, though Tansu's ListOffsets answers the start
of the last record batch + 1: 21 here, where the fetch's high watermark says 30).
"""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from app.infra.consumer_lag import ConsumerLag, lag_of
from tests.conftest import produce


def test_lag_is_zero_when_the_end_or_the_position_is_unknown_or_the_end_is_short() -> None:
    assert lag_of(None, 5) == 0
    assert lag_of(10, None) == 0
    assert lag_of(10, 12) == 0  # Tansu: end = last batch's base + 1 once the batch is read
    assert lag_of(10, 4) == 6


def exported(registry: CollectorRegistry) -> dict[str, float]:
    """The lag samples of group `test`, by partition."""
    return {
        sample.labels["partition"]: sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "flagstream_consumer_lag_records" and sample.labels["group"] == "test"
    }


def test_lag_counts_unread_records_then_zero_on_the_embedded_broker(broker: str) -> None:
    topic = "lag-" + uuid.uuid4().hex[:8]
    # Three separate batches (one produce each): Tansu's end is the third batch's base + 1.
    for batch in range(3):
        produce(broker, topic, [(None, f"{batch}-{i}".encode()) for i in range(10)], partition=0)
    tp = TopicPartition(topic, 0)

    async def run() -> tuple[dict[str, float], dict[str, float]]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=broker, enable_auto_commit=False, fetch_max_wait_ms=10
        )
        await consumer.start()
        registry = CollectorRegistry()
        lag = ConsumerLag()
        registry.register(lag)
        read: dict[TopicPartition, int] = {}
        lag.watch("test", consumer, read.get)
        try:
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            while not read:
                for records in (await consumer.getmany(tp, timeout_ms=100, max_records=5)).values():
                    read[tp] = records[-1].offset + 1
            part_way = exported(registry)
            while read[tp] < 30:
                for records in (await consumer.getmany(tp, timeout_ms=100)).values():
                    read[tp] = records[-1].offset + 1
            return part_way, exported(registry)
        finally:
            await consumer.stop()

    part_way, at_end = asyncio.run(run())
    assert part_way == {"0": 25.0}, part_way
    assert at_end == {"0": 0.0}, at_end
