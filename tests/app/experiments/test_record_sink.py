"""The record sink's channels: each kind of record has its own bound and its own counters, so
a flood of exposures never drops a metric event (the producing is tested through workers:
tests/app/experiments/test_exposures.py, tests/web/test_metric_events_api.py)."""

from __future__ import annotations

import asyncio
import dataclasses

from prometheus_client import CollectorRegistry

from app.experiments.exposures import EXPOSURE, exposure_id
from app.experiments.metric_events import METRIC_EVENT, MetricEvent, event_id
from app.experiments.record_sink import Channel, RecordSink
from app.infra.metrics import Metrics
from app.infra.settings import Settings
from app.infra.topics import Topics


def sample(metrics: Metrics, name: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(name, {"outcome": outcome})
    return value or 0.0


def test_each_channel_is_bounded_and_counted_on_its_own() -> None:
    metrics = Metrics(CollectorRegistry())
    exposures = Channel(EXPOSURE, 2, metrics.exposures, topic="records")
    events = Channel(METRIC_EVENT, 2, metrics.metric_events, topic="records")
    for i in range(3):
        exposures.emit(("env", "f", "on", 1, f"u{i}", 1.0, "sdk", exposure_id(), "f"))
    events.emit(MetricEvent("env", "u0", "buy", 1.0, 1.0, event_id()))
    assert (len(exposures.buffer), len(events.buffer)) == (2, 1)
    assert sample(metrics, "flagstream_exposures_total", "dropped") == 1
    assert sample(metrics, "flagstream_metric_events_total", "dropped") == 0


def test_produce_refuses_at_once_all_of_a_batch_the_buffer_cannot_hold() -> None:
    metrics = Metrics(CollectorRegistry())
    events = Channel(METRIC_EVENT, 2, metrics.metric_events, topic="records")
    batch = [MetricEvent("env", f"u{i}", "buy", 1.0, 1.0, event_id()) for i in range(3)]
    assert asyncio.run(events.produce(batch)) is False
    assert events.buffer == []
    assert sample(metrics, "flagstream_metric_events_total", "dropped") == 3


def test_a_metric_event_is_keyed_timed_and_encoded_like_an_exposure() -> None:
    event = MetricEvent("prod", "user-1", "revenue", 12.5, 1795641301.25, "e1")
    assert METRIC_EVENT.key_of(event) == b"user-1"
    assert METRIC_EVENT.timestamp_ms_of(event) == 1795641301250
    assert METRIC_EVENT.to_json(event) == {
        "schema": 1,
        "event_id": "e1",
        "environment": "prod",
        "targeting_key": "user-1",
        "metric": "revenue",
        "value": 12.5,
        "timestamp": 1795641301.25,
    }
    exposure = ("prod", "f", "on", 3, "user-1", 1795641301.25, "sdk", "x1", "exp")
    assert EXPOSURE.key_of(exposure) == METRIC_EVENT.key_of(event)


async def flushes_idle_then_after_a_record(broker: str, idle_s: float) -> tuple[int, int]:
    """How many flushes a started sink runs in `idle_s` with nothing buffered, and after
    one exposure (until its buffer is taken)."""
    # Tansu has no idempotent producers (the tests' workers turn it off too).
    settings = dataclasses.replace(
        Settings.from_env(), brokers=(broker,), producer_idempotence=False
    )
    metrics = Metrics(CollectorRegistry())
    exposures = Channel(EXPOSURE, 10, metrics.exposures, topic=Topics.of(settings).exposures)
    sink = RecordSink(settings, (exposures,))
    flushes = [0]
    flushed = asyncio.Event()
    flush = sink.flush

    async def counted_flush() -> None:
        flushes[0] += 1
        await flush()
        flushed.set()

    sink.flush = counted_flush  # type: ignore[method-assign]
    await sink.start()
    try:
        await asyncio.sleep(idle_s)  # the silence is what is measured
        idle = flushes[0]
        flushed.clear()
        exposures.emit(("env", "f", "on", 1, "u1", 1.0, "sdk", exposure_id(), "f"))
        await asyncio.wait_for(flushed.wait(), 30)
        assert not exposures.buffer
        return idle, flushes[0] - idle
    finally:
        await sink.stop()


def test_an_idle_sink_does_not_wake_and_flushes_a_record_when_it_comes(broker: str) -> None:
    """The flush loop woke every FLAGSTREAM_EXPOSURE_FLUSH_MS (50 ms) with nothing to send:
    ~20 wake-ups a second of every idle worker (seen 10 flushes in 0.5 s before). It now
    sleeps until a channel gets a record, and flushes one interval later."""
    idle, after = asyncio.run(flushes_idle_then_after_a_record(broker, 0.5))
    assert idle == 0
    assert after >= 1
