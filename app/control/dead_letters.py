"""Reads the tail of `dead-letters` so that writers on this worker hear of refused changes.

A writer only waits for changes it produced after it started waiting, so the reader starts at
the topic's end and moves there again before writes are let out after a recovery (the broker
may have lost the topic, and a position past the new end would hide every new dead letter):
`BrokerWatch.before_writes(reader.move_to_end)`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from mode import Service

from app.control.outcomes import Outcomes
from app.infra.consumer_lag import ConsumerLag, ReadPositions
from app.infra.fetch_wait import LOOP_WAKE_MS, quiet_poll_ms
from app.infra.kafka_security import kafka_client_options
from app.infra.records import DeadLetter, loads
from app.infra.settings import Settings
from app.infra.shutdown import stop_within
from app.infra.topics import Topics

__all__ = ["DeadLetterReader", "decode_dead_letter"]

log = logging.getLogger(__name__)

UNREADABLE_PAUSE_S = 1.0  # pause before reading again after the broker refused a fetch


class DeadLetterReader(Service):
    """Resolves each waiting writer's outcome with the dead letter naming its change id."""

    def __init__(
        self,
        settings: Settings,
        outcomes: Outcomes,
        lag: ConsumerLag | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.outcomes = outcomes
        # The topic has one partition (app.infra.topics.topic_specs).
        self._partition = TopicPartition(Topics.of(settings).dead_letters, 0)
        self._lag = lag  # `flagstream_consumer_lag_records{group="dead-letters"}` when given
        self._positions = ReadPositions()  # the next dead letter to read
        self._consumer: AIOKafkaConsumer | None = None
        # Not `_started`: that is mode's own flag, set before on_start has made the consumer.
        self._consumer_ready = asyncio.Event()
        self._at_end_from_start = False  # on_start's seek to the end, not yet taken by writes

    async def on_start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap,
            **kafka_client_options(self.settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",  # a position the topic lost: only new letters matter
            # Only a rejected write (rare) waits for its dead letter: every fetch waits the
            # quiet poll at the broker, which answers when a letter comes (Kafka at once, the
            # embedded broker within about half of it), and an idle worker pays one fetch
            # per quiet poll here.
            fetch_max_wait_ms=quiet_poll_ms(self.settings.background_poll_ms),
        )
        await self._consumer.start()
        self._consumer.assign([self._partition])
        if self._lag is not None:
            self._lag.watch("dead-letters", self._consumer, self._positions)
        await self._read_from_end()
        self._at_end_from_start = True
        self._consumer_ready.set()

    async def _read_from_end(self) -> None:
        """Seek to the end and know where that is: the lag counts from there."""
        if self._consumer is not None:
            await self._consumer.seek_to_end(self._partition)
            position = await self._consumer.position(self._partition)
            self._positions.start_at(self._partition, position)

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await stop_within(self._consumer.stop())

    async def move_to_end(self) -> None:
        """Read only dead letters written from now on (a `BrokerWatch.before_writes` step:
        once at start, where `on_start` has just done it, and after each recovery)."""
        await self._consumer_ready.wait()
        if self._at_end_from_start:
            # A second seek now would wait for the position behind the fetch in flight (up
            # to the quiet poll): every worker's start waited that long for its writes.
            self._at_end_from_start = False
            return
        await self._read_from_end()

    @Service.task
    async def _tail(self) -> None:
        await self._consumer_ready.wait()
        if self._consumer is None:
            return
        while not self.should_stop:
            try:
                batches = await self._consumer.getmany(timeout_ms=LOOP_WAKE_MS, max_records=500)
            except KafkaError as exc:
                log.warning("dead letters cannot be read (%r): retrying", exc)
                await self.sleep(UNREADABLE_PAUSE_S)
                continue
            for records in batches.values():
                for record in records:
                    self._tell_writer(record.offset, record.value)
                    self._positions.handled(record.topic, record.partition, record.offset)

    def _tell_writer(self, offset: int, value: bytes | None) -> None:
        letter = decode_dead_letter(value)
        if letter is None:
            log.warning("unreadable dead letter at offset %s", offset)
        elif letter.change_id is not None:
            self.outcomes.resolve(letter.change_id, letter.rejection())


def decode_dead_letter(value: bytes | None) -> DeadLetter | None:
    """The dead letter a record holds; None for one we cannot read (a foreign writer's)."""
    try:
        data = loads(value or b"")
        return DeadLetter.from_json(data) if isinstance(data, dict) else None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
