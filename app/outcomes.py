"""Where a writer waits for the fate of the change it produced.

The HTTP handler that produced a change may run on a worker that does not decide it; it
learns the outcome from what every worker reads anyway: the flag table's changelog (applied)
or the dead-letter topic (rejected), matched by change id.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app.records import AppliedChange

Outcome = AppliedChange | dict[str, Any]  # an applied change, or a dead letter's JSON


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
