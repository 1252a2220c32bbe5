"""Parking a record an agent cannot take: one dead letter, one metric, one log line.

Both agents refuse records the same way, whatever producer they send with: the letter says
what was refused (the record's bytes, clipped), why (a code, a reason, the problems) and where
it came from (topic, partition, offset), so an operator can find and replay it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from app.infra.metrics import Metrics
from app.infra.records import DeadLetter, Rejection, dumps

__all__ = ["DeadLetterSender"]

log = logging.getLogger(__name__)


class DeadLetterSender:
    """Sends dead letters for records of `topic` with `send` (the agent's own producer)."""

    def __init__(
        self, topic: str, send: Callable[[bytes], Awaitable[object]], metrics: Metrics
    ) -> None:
        self.topic = topic
        self.send = send
        self.counted = metrics.dead_letters

    async def park(
        self,
        rejection: Rejection,
        raw: bytes | None,
        partition: int,
        offset: int,
        *,
        environment: str | None = None,
        flag: str | None = None,
        change_id: str | None = None,
    ) -> None:
        letter = DeadLetter(
            code=rejection.code,
            reason=rejection.reason,
            topic=self.topic,
            partition=partition,
            offset=offset,
            payload=raw or b"",
            problems=rejection.problems,
            change_id=change_id or rejection.change_id,
            environment=environment,
            flag=flag,
            current_version=rejection.current_version,
            at=time.time(),
        )
        await self.send(dumps(letter.to_json()))
        self.counted.labels(rejection.code.value).inc()
        log.info(
            "dead letter %s at %s/%d/%d: %s",
            rejection.code,
            self.topic,
            partition,
            offset,
            rejection.reason,
        )
