"""Metric events: what a subject did (a purchase, a latency), for the analysis of experiments.

An event names a metric an experiment flag declares (`app.experiments.metrics`), a subject
(the targeting key) and a value (a conversion is 1). It goes to `metric-events` keyed by the
targeting key, through the same record sink and partitioner as exposures, on a topic with
the same partition count: a subject's exposures and events meet in one partition number.
Each event carries an `event_id`, the consumer's dedupe key (an SDK's own id, or one made
here).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from app.experiments.record_sink import Channel, RecordKind
from app.infra.metrics import Metrics
from app.infra.records import SCHEMA_VERSION
from app.infra.settings import Settings
from app.infra.topics import Topics

__all__ = ["METRIC_EVENT", "MetricEvent", "event_id", "metric_event_channel", "to_json"]


class MetricEvent(NamedTuple):
    """One event as buffered for the sink: a tuple, encoded only when it is produced."""

    environment: str
    targeting_key: str
    metric: str
    value: float
    timestamp: float  # unix seconds
    event_id: str


def event_id() -> str:
    """128 random bits as hex, for an event its sender gave no id."""
    return os.urandom(16).hex()


def to_json(event: MetricEvent) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "event_id": event.event_id,
        "environment": event.environment,
        "targeting_key": event.targeting_key,
        "metric": event.metric,
        "value": event.value,
        "timestamp": event.timestamp,
    }


METRIC_EVENT: RecordKind[MetricEvent] = RecordKind(
    noun="metric events",
    key_of=lambda event: event.targeting_key.encode(),  # as exposures: co-partitioned
    timestamp_ms_of=lambda event: int(event.timestamp * 1000),
    to_json=to_json,
)


def metric_event_channel(settings: Settings, metrics: Metrics) -> Channel[MetricEvent]:
    """The metric events' channel of the record sink, bounded like the exposures' one
    (`FLAGSTREAM_EXPOSURE_BUFFER`, a buffer of its own) and counted in
    `flagstream_metric_events_total`."""
    topic = Topics.of(settings).metric_events
    return Channel(METRIC_EVENT, settings.exposure_buffer, metrics.metric_events, topic=topic)
