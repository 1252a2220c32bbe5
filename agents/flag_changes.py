"""The flag-change agent: decides each command on `flag-changes` and writes the verdict.

Read top to bottom: make sure the table holds everything already decided for this partition,
skip a command decided before (a redelivery: its offset is at or below the highest the table
has seen decided), decode, decide (a retried change id is a no-op), then either append the new
version to the changelog (and wait until this worker's table holds it, so the next decision
sees it) or send a dead letter. Nothing a writer sends can stop this loop: every failure is a
value that ends in a dead letter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust

from agents.dead_letters import DeadLetterSender
from app.control.changes import decide, decode_change
from app.infra.consumer_lag import FaustConsumer, ReadPositions
from app.infra.metrics import Metrics
from app.infra.records import (
    AppliedChange,
    DeadLetterCode,
    FlagChange,
    Rejection,
    changelog_headers,
    dumps,
)
from app.infra.settings import Settings, changelog_signer
from app.infra.topics import Topics, partition_for
from tables.broker_watch import BrokerWatch
from tables.flags import FlagTable
from tables.replication import FlagReplication

__all__ = ["FlagChangeAgent"]

log = logging.getLogger(__name__)

# Largest changelog record the agent writes, in bytes: under Kafka's default 1 MiB message
# limit with room for the key and the batch. A bigger change (a command near 1 MiB, or one
# whose numbers re-encode longer: `1e15` is written `1000000000000000.0`) made the producer
# raise, which crashed the agent and lost the command without a dead letter.
MAX_CHANGELOG_RECORD = 900_000


class FlagChangeAgent:
    """The Faust agent on `flag-changes`, with what it decides against."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        flags: FlagTable,
        replication: FlagReplication,
        broker_watch: BrokerWatch,
        metrics: Metrics,
    ) -> None:
        self.app = app
        self.topics = Topics.of(settings)
        self.signer = changelog_signer(settings)  # replicas apply only what it signed
        self.decided = metrics.flag_changes
        self.dead_letters = DeadLetterSender(
            self.topics.flag_changes, self._send_dead_letter, metrics
        )
        self.broker_watch = broker_watch
        self.partitions = settings.flag_change_partitions
        self.flags = flags
        self.replication = replication
        self.lag = metrics.consumer_lag
        self.positions = ReadPositions()  # the next command to decide, per partition
        # Partitions whose changelog this worker has fenced since it was last assigned them.
        self.synced_partitions: set[int] = set()

    def attach(self) -> None:
        """Declare the agent on the app, and forget fenced partitions when they move or
        when the table is rebuilt from another log (a broker that lost its data)."""
        # Raw bytes: the agent decodes at the edge, so bad input becomes a dead letter.
        topic = self.app.topic(
            self.topics.flag_changes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=self.partitions,
        )
        self.app.agent(topic, name="agents.flag_changes.apply_flag_changes")(self.consume)
        # mode's SignalHandlerT (mypy_extensions VarArg/NamedArg) matches no `def` in mypy.
        self.app.on_partitions_revoked.connect(self._forget_synced)  # type: ignore[arg-type]
        self.replication.on_rebuild(self.synced_partitions.clear)

    async def _forget_synced(self, sender: Any, revoked: Any, **kwargs: Any) -> None:
        self.synced_partitions.clear()

    async def consume(self, stream: Any) -> None:
        # The agent runs once Faust's consumer has started: its lag is readable from now on.
        self.lag.watch("flag-changes", FaustConsumer(self.app.consumer), self.positions)
        async for event in stream.events():
            message = event.message
            await self.handle(message.value, message.partition, message.offset)
            self.positions.handled(message.topic, message.partition, message.offset)

    async def handle(self, raw: bytes | None, partition: int, offset: int) -> None:
        """Decide one command; a failure of any kind ends in a dead letter, never an exception."""
        # While the broker is being checked (it was unreachable, or came back and may have lost
        # its data) the table may not be the log's: neither skip nor decide against it yet.
        await self.broker_watch.writable.wait()
        if partition not in self.synced_partitions:
            await self.replication.sync([partition])
            self.synced_partitions.add(partition)
        if offset <= self.flags.decided(partition):
            self.decided.labels("duplicate").inc()
            return
        try:
            change, verdict = await self._decode_and_decide(raw, partition, offset)
        except Exception as exc:  # a bug must not stop the control plane: park the record
            log.exception("deciding %s/%d/%d failed", self.topics.flag_changes, partition, offset)
            change, verdict = None, Rejection(DeadLetterCode.MALFORMED, f"internal error: {exc!r}")
        if verdict is None:
            self.decided.labels("duplicate").inc()
            return
        record = dumps(verdict.to_json()) if isinstance(verdict, AppliedChange) else b""
        if len(record) > MAX_CHANGELOG_RECORD:
            reason = f"the change would be a {len(record)}-byte record, over {MAX_CHANGELOG_RECORD}"
            verdict = Rejection(DeadLetterCode.MALFORMED, reason)
        if isinstance(verdict, Rejection):
            await self.send_dead_letter(verdict, raw, partition, offset, change)
            return
        await self.append_to_changelog(
            verdict.environment, record, partition, changelog_headers(verdict)
        )
        self.decided.labels("applied").inc()

    async def _decode_and_decide(
        self, raw: bytes | None, partition: int, offset: int
    ) -> tuple[FlagChange | None, AppliedChange | Rejection | None]:
        """The command in `raw` and its verdict; None for a change already applied."""
        change = decode_change(raw)
        if isinstance(change, Rejection):
            return None, change
        if partition != partition_for(change.environment, self.partitions):
            reason = "a change must be keyed by its environment (Kafka's default partitioner)"
            return change, Rejection(DeadLetterCode.MALFORMED, reason)
        current = self.flags.get(change.environment, change.flag)
        seq = self.flags.environment_seq(change.environment)
        earlier = self.flags.applied(change.environment, change.change_id)
        # Validating a big definition takes milliseconds to seconds of CPU: off the event loop,
        # so this worker keeps serving and heartbeating meanwhile.
        verdict = await asyncio.to_thread(
            decide, change, current, seq, time.time(), earlier=earlier, source=(partition, offset)
        )
        return change, verdict

    async def _send_dead_letter(self, letter: bytes) -> None:
        await self.app.producer.send_and_wait(self.topics.dead_letters, None, letter, 0, None, None)

    async def append_to_changelog(
        self,
        environment: str,
        record: bytes,
        partition: int,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Append a decided change; `headers` its meta (replicas apply it without parsing),
        signed for this topic and partition (app.infra.changelog_signing)."""
        topic, key = self.topics.flags_changelog, environment.encode()
        signed = self.signer.headers(topic, partition, key, record, headers or [])
        metadata = await self.app.producer.send_and_wait(
            topic, key, record, partition, None, signed
        )
        await self.replication.wait_applied(partition, metadata.offset)

    async def send_dead_letter(
        self,
        rejection: Rejection,
        raw: bytes | None,
        partition: int,
        offset: int,
        change: FlagChange | None,
    ) -> None:
        if change is None:
            await self.dead_letters.park(rejection, raw, partition, offset)
        else:
            await self.dead_letters.park(
                rejection,
                raw,
                partition,
                offset,
                environment=change.environment,
                flag=change.flag,
                change_id=change.change_id,
            )
        self.decided.labels("rejected").inc()
