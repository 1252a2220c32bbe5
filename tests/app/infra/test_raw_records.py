"""Records as read, on the real broker: a marked consumer gets aiokafka's reader records
(offset, key, value, headers), its position moving as with `ConsumerRecord`s; others are
unchanged."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from app.infra.raw_records import RAW_RECORDS, install_raw_records
from tests.conftest import create_topic

RECORDS = [
    (b"k0", b"v0", [("h", b"x")]),
    (None, b"v1", []),
    (b"k2", None, [("a", b"1"), ("b", None)]),
]


async def write(brokers: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=brokers, linger_ms=20)
    await producer.start()
    try:
        sent = [
            await producer.send(topic, value, key=key, partition=0, headers=headers)
            for key, value, headers in RECORDS
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def read_all(brokers: str, topic: str, **options: Any) -> tuple[list[Any], int]:
    """Every record of partition 0 from its start, and the consumer's position after."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=brokers, group_id=None, enable_auto_commit=False, **options
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        read: list[Any] = []
        async with asyncio.timeout(20):
            while len(read) < len(RECORDS):
                batches = await consumer.getmany(timeout_ms=200)
                read.extend(batches.get(tp, []))
        return read, await consumer.position(tp)
    finally:
        await consumer.stop()


def test_a_marked_consumer_gets_the_records_as_read_and_others_consumer_records(
    broker: str,
) -> None:
    install_raw_records()
    install_raw_records()  # idempotent
    topic = asyncio.run(create_topic(broker, "raw"))
    asyncio.run(write(broker, topic))

    raw, raw_position = asyncio.run(read_all(broker, topic, key_deserializer=RAW_RECORDS))
    plain, plain_position = asyncio.run(read_all(broker, topic))

    assert raw_position == plain_position == len(RECORDS)
    assert not any(isinstance(record, ConsumerRecord) for record in raw)
    assert all(isinstance(record, ConsumerRecord) for record in plain)
    as_read = [(r.offset, r.key, r.value, list(r.headers)) for r in raw]
    as_consumed = [(r.offset, r.key, r.value, list(r.headers)) for r in plain]
    expected = [(n, k, v, h) for n, (k, v, h) in enumerate(RECORDS)]
    assert as_read == as_consumed == expected
