"""Producing a flag change and waiting, bounded, for its fate.

The HTTP API is a writer like any other: it puts a command on `flag-changes` and learns the
verdict from the changelog or the dead-letter topic. One write path, so a change made with
curl, the CLI or a foreign Kafka producer is validated and ordered the same way.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from app.main import faust_app, outcomes, settings
from app.outcomes import Outcome
from app.records import ChangeOp, FlagChange, dumps
from app.topics import FLAG_CHANGES, partition_for


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


async def submit(change: FlagChange) -> Outcome | None:
    """The applied change or the dead letter it produced; None if neither came in time."""
    future = outcomes.expect(change.change_id)
    try:
        await faust_app.producer.send_and_wait(
            FLAG_CHANGES,
            change.environment.encode(),
            dumps(change.to_json()),
            partition_for(change.environment, settings.flag_change_partitions),
            None,
            None,
        )
        return await asyncio.wait_for(future, settings.write_timeout_s)
    except TimeoutError:
        return None
    finally:
        outcomes.forget(change.change_id)
