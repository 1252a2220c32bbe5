"""Producing a flag change and waiting, bounded, for its fate.

The HTTP API is a writer like any other: it puts a command on `flag-changes` and learns the
verdict from the changelog or the dead-letter topic. One write path, so a change made with
curl, the CLI or a foreign Kafka producer is validated and ordered the same way.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Protocol

from aiokafka.errors import KafkaError

from app.control.outcomes import BrokerUnavailable, Outcome, Outcomes
from app.engine import JsonObject
from app.infra.records import ChangeOp, FlagChange, dumps
from app.infra.settings import Settings
from app.infra.topics import Topics, partition_for

__all__ = ["ChangeProducer", "ProducerSource", "Writer", "new_change"]


class ChangeProducer(Protocol):
    """What the writer needs of a Kafka producer (Faust's, positional arguments)."""

    async def send_and_wait(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
    ) -> Any: ...


class ProducerSource(Protocol):
    """Whatever holds the producer (the Faust app): it is created when first asked for."""

    @property
    def producer(self) -> ChangeProducer: ...


class WriteGate(Protocol):
    """Set while writes may go out (`tables.broker_watch.BrokerWatch.writable`)."""

    def is_set(self) -> bool: ...


def new_change(
    environment: str,
    flag: str,
    op: ChangeOp,
    actor: str,
    *,
    definition: JsonObject | None = None,
    state: str | None = None,
    expected_version: int | None = None,
    change_id: str | None = None,
) -> FlagChange:
    """A command for `flag-changes`, produced now, under a new change id unless given one."""
    return FlagChange(
        change_id=change_id or str(uuid.uuid4()),
        environment=environment,
        flag=flag,
        op=op,
        actor=actor,
        produced_at=time.time(),
        definition=definition,
        state=state,
        expected_version=expected_version,
    )


class Writer:
    """Sends commands to `flag-changes` and waits for their outcomes."""

    def __init__(
        self, source: ProducerSource, outcomes: Outcomes, writable: WriteGate, settings: Settings
    ) -> None:
        self._source = source
        self._outcomes = outcomes
        self._writable = writable
        self._timeout_s = settings.write_timeout_s
        self._partitions = settings.flag_change_partitions
        self._topic = Topics.of(settings).flag_changes

    async def submit(self, change: FlagChange) -> Outcome | None:
        """The applied change or why it was refused, within FLAGSTREAM_WRITE_TIMEOUT_S.

        `BrokerUnavailable` when the broker cannot take writes (unreachable, or its log being
        checked after it came back: `writable` is clear), and None when the change was sent
        but its outcome did not come in time. The produce is inside the bound too: Faust's
        producer waits up to its request timeout (20 minutes) for a broker that does not answer.
        """
        if not self._writable.is_set():
            return BrokerUnavailable(sent=False)
        future = self._outcomes.expect(change.change_id)
        sent = False
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._send(change)
                sent = True
                return await future
        except TimeoutError:
            return None if sent and self._writable.is_set() else BrokerUnavailable(sent=True)
        except KafkaError:
            return BrokerUnavailable(sent=True)
        finally:
            self._outcomes.forget(change.change_id)

    async def _send(self, change: FlagChange) -> None:
        await self._source.producer.send_and_wait(
            self._topic,
            change.environment.encode(),
            dumps(change.to_json()),
            partition_for(change.environment, self._partitions),
            None,
            None,
        )
