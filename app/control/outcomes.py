"""Where a writer waits for the fate of the change it produced.

The HTTP handler that produced a change may run on a worker that does not decide it; it
learns the outcome from what every worker reads anyway: the flag table's changelog (applied,
`Outcomes.heard_applied`, subscribed to `FlagReplication.on_applied`) or the dead-letter
topic (refused, `app.control.dead_letters`), matched by change id.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from app.infra.records import AppliedChange, DeadLetterCode, Rejection
from tables.flags import FlagTable

__all__ = ["BROKER_UNAVAILABLE", "BrokerUnavailable", "Outcome", "Outcomes"]

BROKER_UNAVAILABLE = "BROKER_UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class BrokerUnavailable:
    """The outcome of a write the broker could not take: never from a dead letter.

    `sent`: the command may have reached the broker before it went away, so it may still be
    applied; a retry with the same `Idempotency-Key` is then answered with that change.
    """

    sent: bool
    code = BROKER_UNAVAILABLE

    @property
    def reason(self) -> str:
        fate = "the change may still be applied" if self.sent else "the change was not sent"
        return (
            f"the Kafka broker is unreachable or recovering and this worker serves its last "
            f"known flags read-only: {fate}; retry with the same Idempotency-Key"
        )


# An applied change, the decision not to apply it (from its dead letter, or a sequence number
# another decision took), or a broker that could not take it.
Outcome = AppliedChange | Rejection | BrokerUnavailable


class Outcomes:
    """Futures by change id, resolved by the changelog and dead-letter readers."""

    def __init__(self, table: FlagTable) -> None:
        self._table = table
        self._waiting: dict[str, asyncio.Future[Outcome]] = {}

    def expect(self, change_id: str) -> asyncio.Future[Outcome]:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting[change_id] = future
        return future

    def forget(self, change_id: str) -> None:
        self._waiting.pop(change_id, None)

    def resolve(self, change_id: str | None, outcome: Outcome) -> None:
        future = self._waiting.pop(change_id, None) if change_id else None
        if future is not None and not future.done():
            future.set_result(outcome)

    def heard_applied(self, changes: list[AppliedChange], fresh: bool) -> None:
        """Changelog records were read (`fresh`: the table applied them): tell their
        writers. A `FlagReplication.on_applied` listener: with no writer waiting (a
        catch-up) no change is read, so none is decoded (a change decodes its fields when
        one is first read: `app.infra.records.read_binary_meta`)."""
        waiting = self._waiting
        if not waiting:
            return
        for change in changes:
            if change.change_id in waiting:
                self.resolve(change.change_id, self._outcome(change, fresh))

    def _outcome(self, change: AppliedChange, fresh: bool) -> AppliedChange | Rejection:
        """What the writer of `change` learns: its applied version, or that it was lost.

        A record that is not fresh either repeats a change already applied (a redelivery:
        the writer gets that change) or carries a sequence number another decision took
        first (two deciders during a rebalance): that change is not in the table, and its
        writer must hear so rather than get a version that is not there.
        """
        if fresh:
            return change
        applied = self._table.applied(change.environment, change.change_id)
        if applied is not None:
            return applied
        current = self._table.get(change.environment, change.flag)
        return Rejection(
            DeadLetterCode.VERSION_CONFLICT,
            "a concurrent decision took this change's sequence number; retry the write",
            current_version=current.version if current else 0,
            change_id=change.change_id,
        )
