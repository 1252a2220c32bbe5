"""What the producers write is what the fold reads; anything else is a Rejection, not a crash."""

from __future__ import annotations

import pytest

from app.experiments import exposures, metric_events
from app.experiments.attribution import Event, Exposure
from app.experiments.fold import EventRecord, ExposureRecord
from app.experiments.metric_events import MetricEvent
from app.experiments.sources import decode_exposure, decode_metric_event
from app.infra.records import DeadLetterCode, Rejection, dumps


def test_an_exposure_as_produced_decodes_to_the_fold_record() -> None:
    pending = ("dev", "checkout-flag", "b", 7, "ann", 1795641258.5, "ofrep", "x-1", "checkout")
    raw = dumps(exposures.to_json(pending))
    assert decode_exposure(raw) == ExposureRecord(
        "dev", "checkout", "ann", Exposure(1795641258.5, "x-1", "b", 7)
    )


def test_a_metric_event_as_produced_decodes_to_the_fold_record() -> None:
    event = MetricEvent("dev", "ann", "revenue", 12.5, 1795641260.0, "e-1")
    raw = dumps(metric_events.to_json(event))
    assert decode_metric_event(raw) == EventRecord(
        "dev", "ann", Event(1795641260.0, "e-1", "revenue", 12.5)
    )


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (b"not json", None),
        (b"[1]", None),
        (b'{"schema": 2}', "$.schema"),
        (b'{"schema": 1, "environment": "dev"}', "$.experiment"),
        (
            b'{"schema": 1, "environment": "dev", "experiment": "e", "targeting_key": "a",'
            b' "variant": "b", "exposure_id": "x", "timestamp": true, "flag_version": 1}',
            "$.timestamp",
        ),
        (
            b'{"schema": 1, "environment": "dev", "experiment": "e", "targeting_key": "a",'
            b' "variant": "b", "exposure_id": "x", "timestamp": 1, "flag_version": 0}',
            "$.flag_version",
        ),
        (None, None),
    ],
)
def test_a_record_that_is_no_exposure_is_a_rejection(raw: bytes | None, path: str | None) -> None:
    decoded = decode_exposure(raw)
    assert isinstance(decoded, Rejection)
    assert decoded.code is DeadLetterCode.MALFORMED
    if path is not None:
        assert path in [p for p, _ in decoded.problems]


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (b'{"schema": 1}', "$.metric"),
        (
            b'{"schema": 1, "environment": "dev", "targeting_key": "a", "metric": "m",'
            b' "event_id": "e", "timestamp": 1, "value": "12"}',
            "$.value",
        ),
        (
            b'{"schema": 1, "environment": "dev", "targeting_key": "", "metric": "m",'
            b' "event_id": "e", "timestamp": 1, "value": 1}',
            "$.targeting_key",
        ),
    ],
)
def test_a_record_that_is_no_metric_event_is_a_rejection(raw: bytes, path: str) -> None:
    decoded = decode_metric_event(raw)
    assert isinstance(decoded, Rejection)
    assert path in [p for p, _ in decoded.problems]
