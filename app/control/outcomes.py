"""Where a writer waits for the fate of the change it produced.

The HTTP handler that produced a change may run on a worker that does not decide it; it
learns the outcome from what every worker reads anyway: the flag table's changelog (applied)
or the dead-letter topic (rejected), matched by change id.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app.infra.records import AppliedChange

Outcome = AppliedChange | dict[str, Any]  # an applied change, or a dead letter's JSON

BROKER_UNAVAILABLE = "BROKER_UNAVAILABLE"


def broker_unavailable(sent: bool) -> dict[str, Any]:
    """The outcome of a write the broker could not take: like a dead letter, never from one.

    `sent`: the command may have reached the broker before it went away, so it may still be
    applied; a retry with the same `Idempotency-Key` is then answered with that change.
    """
    fate = "the change may still be applied" if sent else "the change was not sent"
    return {
        "code": BROKER_UNAVAILABLE,
        "reason": f"the Kafka broker is unreachable or recovering and this worker serves its "
        f"last known flags read-only: {fate}; retry with the same Idempotency-Key",
    }


class Outcomes:
    """Futures by change id, resolved by the changelog and dead-letter readers."""

    def __init__(self) -> None:
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
