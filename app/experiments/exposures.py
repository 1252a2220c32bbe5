"""Exposure events: who saw which variant of which experiment, produced off the request path.

An evaluation appends a small tuple to the exposures' channel of the experiments' record sink
(`app.experiments.record_sink`: no I/O, no JSON); the sink produces the buffer to `exposures`
in batches every `FLAGSTREAM_EXPOSURE_FLUSH_MS`. When Kafka cannot keep up the buffer is
bounded (`FLAGSTREAM_EXPOSURE_BUFFER`): new exposures are dropped and counted
(`flagstream_exposures_total{outcome="dropped"}`), never the request delayed. Each exposure
has a unique `exposure_id`, so a consumer can drop the duplicates a producer retry may make
where the broker has no idempotent producer.

Exposures of evaluations are at most `FLAGSTREAM_EXPOSURE_FLUSH_MS` in the buffer: a worker
stopped cleanly produces them, a killed one loses that much. Exposures an SDK posts are
acknowledged only once the broker has them (`produce`), so an acknowledged one is never lost.
"""

from __future__ import annotations

import os
from typing import Any, TypeAlias

from app.experiments.record_sink import Channel, RecordKind
from app.infra.metrics import Metrics
from app.infra.records import SCHEMA_VERSION
from app.infra.settings import Settings
from app.infra.topics import Topics

__all__ = ["EXPOSURE", "ExposureSink", "Pending", "exposure_channel", "exposure_id"]

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


EXPOSURE: RecordKind[Pending] = RecordKind(
    noun="exposures",
    key_of=lambda exposure: exposure[4].encode(),  # the targeting key
    timestamp_ms_of=lambda exposure: int(exposure[5] * 1000),
    to_json=to_json,
)

# Where exposures go: the evaluator emits into it, the exposures API produces through it.
ExposureSink: TypeAlias = Channel[Pending]


def exposure_channel(settings: Settings, metrics: Metrics) -> ExposureSink:
    """The exposures' channel, bounded by `FLAGSTREAM_EXPOSURE_BUFFER`, counted in
    `flagstream_exposures_total`; `RecordSink` produces it."""
    topic = Topics.of(settings).exposures
    return Channel(EXPOSURE, settings.exposure_buffer, metrics.exposures, topic=topic)
