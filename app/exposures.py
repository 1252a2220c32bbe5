"""Exposure events: who saw which variant of which experiment, produced off the request path.

An evaluation appends a small tuple to a buffer (no I/O, no JSON); a task produces the
buffer to `exposures` in batches every `FLAGSTREAM_EXPOSURE_FLUSH_MS`. When Kafka cannot keep
up the buffer is bounded: new exposures are dropped and counted
(`flagstream_exposures_total{outcome="dropped"}`), never the request delayed. Each exposure
has a unique `exposure_id`, so a consumer can drop the duplicates a producer retry may make
where the broker has no idempotent producer.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from aiokafka import AIOKafkaProducer
from mode import Service

from app import metrics
from app.records import SCHEMA_VERSION, dumps
from app.settings import Settings
from app.topics import EXPOSURES

log = logging.getLogger(__name__)

# (environment, flag, variant, flag_version, targeting_key, timestamp, source, exposure_id,
#  experiment)
Pending = tuple[str, str, str, int, str, float, str, str, str]


def exposure_id() -> str:
    """128 random bits as hex: unique without uuid4's object overhead on the hot path."""
    return os.urandom(16).hex()


def to_json(pending: Pending) -> dict[str, Any]:
    environment, flag, variant, version, targeting_key, timestamp, source, ident, experiment = (
        pending
    )
    return {
        "schema": SCHEMA_VERSION,
        "exposure_id": ident,
        "environment": environment,
        "flag": flag,
        "experiment": experiment,
        "variant": variant,
        "flag_version": version,
        "targeting_key": targeting_key,
        "timestamp": timestamp,
        "source": source,
    }


class ExposureSink(Service):
    """Buffers exposures and produces them in batches."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.buffer: list[Pending] = []
        self._producer: AIOKafkaProducer | None = None

    def emit(self, pending: Pending) -> None:
        """Queue one exposure; drops (and counts) it when the buffer is full."""
        if len(self.buffer) < self.settings.exposure_buffer:
            self.buffer.append(pending)
        else:
            metrics.EXPOSURES.labels("dropped").inc()

    async def on_start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap,
            acks="all",
            linger_ms=5,
            enable_idempotence=self.settings.producer_idempotence,
        )
        await self._producer.start()

    async def on_stop(self) -> None:
        await self.flush()
        if self._producer is not None:
            await self._producer.stop()

    @Service.task
    async def _flush_forever(self) -> None:
        interval = self.settings.exposure_flush_ms / 1000
        while not self.should_stop:
            await asyncio.sleep(interval)
            await self.flush()

    async def flush(self) -> None:
        """Produce everything buffered; returns once the broker has acknowledged it."""
        if not self.buffer or self._producer is None:
            return
        batch, self.buffer = self.buffer, []
        futures = [
            await self._producer.send(EXPOSURES, dumps(to_json(p)), key=p[4].encode())
            for p in batch
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = sum(isinstance(r, BaseException) for r in results)
        metrics.EXPOSURES.labels("produced").inc(len(batch) - failed)
        if failed:
            metrics.EXPOSURES.labels("dropped").inc(failed)
            log.error("%d of %d exposures could not be produced", failed, len(batch))
