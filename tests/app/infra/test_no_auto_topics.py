"""Our clients ask for a missing topic's metadata without creating it (the embedded broker
creates any topic a client asks about, with 4 partitions, unless the request says not to)."""

from __future__ import annotations

import asyncio
import uuid

import aiokafka.client
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaTimeoutError

from app.infra.no_auto_topics import refuse_topic_auto_creation


async def ask_for(brokers: str, topic: str) -> set[str]:
    """Send to `topic` (asking for its metadata), then list the broker's topics."""
    producer = AIOKafkaProducer(bootstrap_servers=brokers, request_timeout_ms=3000)
    await producer.start()
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, b"x"), timeout=3)
    except (KafkaTimeoutError, TimeoutError):
        pass  # the topic does not exist and the broker was told not to make it
    finally:
        await producer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def test_a_client_asking_for_a_missing_topic_does_not_create_it(
    broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = f"asked-{uuid.uuid4().hex[:8]}"
    assert created in asyncio.run(ask_for(broker, created))  # the broker's default: created

    # Restored after the test: the other tests of this process keep aiokafka as it is.
    monkeypatch.setattr(aiokafka.client, "MetadataRequest", aiokafka.client.MetadataRequest)
    refuse_topic_auto_creation()
    refused = f"asked-{uuid.uuid4().hex[:8]}"
    assert refused not in asyncio.run(ask_for(broker, refused))
