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

from app.control.outcomes import Outcome, Outcomes, broker_unavailable
from app.infra.records import ChangeOp, FlagChange, dumps
from app.infra.settings import Settings
from app.infra.topics import FLAG_CHANGES, partition_for
from tables.replication import FlagReplication

__all__ = ["ChangeWriter", "new_change"]


class Producer(Protocol):
    """What the writer needs of a producer: Faust's (`app.producer`) has it."""

    async def send_and_wait(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
    ) -> Any: ...


def new_change(
    environment: str,
    flag: str,
    op: ChangeOp,
    actor: str,
    *,
    definition: dict[str, Any] | None = None,
    state: str | None = None,
    expected_version: int | None = None,
    change_id: str | None = None,
) -> FlagChange:
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


class ChangeWriter:
    """Puts commands on `flag-changes` and waits, bounded, for each one's verdict."""

    def __init__(
        self,
        producer: Producer,
        outcomes: Outcomes,
        replication: FlagReplication,
        settings: Settings,
    ) -> None:
        self.producer = producer
        self.outcomes = outcomes
        self.replication = replication
        self.timeout_s = settings.write_timeout_s
        self.partitions = settings.flag_change_partitions

    async def submit(self, change: FlagChange) -> Outcome | None:
        """The applied change or the dead letter it produced, within FLAGSTREAM_WRITE_TIMEOUT_S.

        `broker_unavailable` when the broker cannot take writes (unreachable, or its log
        being checked after it came back: `replication.writable`), and None when the change
        was sent but its outcome did not come in time. The produce is inside the bound too:
        Faust's producer waits up to its request timeout (20 minutes) for a broker that does
        not answer.
        """
        if not self.replication.writable.is_set():
            return broker_unavailable(sent=False)
        future = self.outcomes.expect(change.change_id)
        sent = False
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.producer.send_and_wait(
                    FLAG_CHANGES,
                    change.environment.encode(),
                    dumps(change.to_json()),
                    partition_for(change.environment, self.partitions),
                    None,
                    None,
                )
                sent = True
                return await future
        except TimeoutError:
            return (
                None
                if sent and self.replication.writable.is_set()
                else broker_unavailable(sent=True)
            )
        except KafkaError:
            return broker_unavailable(sent=True)
        finally:
            self.outcomes.forget(change.change_id)
