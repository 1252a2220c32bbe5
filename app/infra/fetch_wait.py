"""Bound how long a Kafka fetch may wait for data, in Faust's consumer too.

Kafka answers a waiting fetch as soon as data arrives, so a long `fetch_max_wait_ms` costs
nothing there. The embedded broker (Tansu) does not: it holds every fetch for the full wait,
so Faust's hard-coded 1500 ms becomes ~0.7 s of latency at every hop of the write path. Faust
offers no setting for it; this wraps the one method that builds its consumer.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = ["bound_fetch_wait"]


def bound_fetch_wait(max_wait_ms: int) -> None:
    """Make Faust's worker consumer wait at most `max_wait_ms` per fetch (idempotent)."""
    thread_class: Any = faust_aiokafka.AIOKafkaConsumerThread
    original = (
        getattr(thread_class, "_flagstream_original_create", None)
        or thread_class._create_worker_consumer
    )

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        # AIOKafkaConsumer keeps the value until start() builds its Fetcher from it.
        consumer._fetch_max_wait_ms = max_wait_ms
        return consumer

    thread_class._flagstream_original_create = original
    thread_class._create_worker_consumer = create_worker_consumer
