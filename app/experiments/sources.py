"""The records the experiment fold reads, decoded at the edge: `exposures` and `metric-events`.

A record that is not what its topic carries is a value (`Rejection`), never an exception, so
the consumer can park it as a dead letter and go on; what decodes is exactly what the
producers write (`app.experiments.exposures.to_json`, `app.experiments.metric_events.to_json`),
which the tests check by round trip.

A producer may write to the topics directly, so a record is held to what the SDK routes accept
(app/web/sdk_batches.py, app/web/metric_events.py): texts of at most `MAX_TEXT` characters,
values of at most `MAX_VALUE` in size, timestamps in (0, `MAX_TIMESTAMP`]. Unbounded, a value
of 1e308 made Σx² infinite (stored as null: the next fold of the experiment crashed), a
timestamp of 1e308 made a time window no 64-bit integer holds (the fold crashed), and a
megabyte key made changelog records past Kafka's limit.
"""

from __future__ import annotations

import math
from typing import Any, Final

from app.experiments.attribution import Event, Exposure
from app.experiments.fold import EventRecord, ExposureRecord
from app.infra.json_input import Unacceptable, parse_json
from app.infra.records import SCHEMA_VERSION, Rejection

__all__ = ["MAX_TEXT", "MAX_TIMESTAMP", "MAX_VALUE", "decode_exposure", "decode_metric_event"]

MAX_TEXT: Final = 256  # characters of an id, a name or a targeting key
# A subject's value is the sum of up to MAX_EVENTS such values, and its square is summed over
# every subject (Σx²): 1e15 keeps that far inside a float.
MAX_VALUE: Final = 1e15
MAX_TIMESTAMP: Final = 253_402_300_799.0  # unix seconds of 9999-12-31T23:59:59Z

_EXPOSURE_TEXT = ("environment", "experiment", "targeting_key", "variant", "exposure_id")
_EVENT_TEXT = ("environment", "targeting_key", "metric", "event_id")


def decode_exposure(raw: bytes | None) -> ExposureRecord | Rejection:
    data = _record(raw)
    if isinstance(data, Rejection):
        return data
    problems = _texts(data, _EXPOSURE_TEXT) + _timestamp(data)
    version = data.get("flag_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        problems.append(("$.flag_version", "must be a positive integer"))
    if problems:
        return Rejection.malformed("not an exposure", *problems)
    exposure = Exposure(
        float(data["timestamp"]), data["exposure_id"], data["variant"], data["flag_version"]
    )
    return ExposureRecord(data["environment"], data["experiment"], data["targeting_key"], exposure)


def decode_metric_event(raw: bytes | None) -> EventRecord | Rejection:
    data = _record(raw)
    if isinstance(data, Rejection):
        return data
    problems = _texts(data, _EVENT_TEXT) + _timestamp(data) + _value(data)
    if problems:
        return Rejection.malformed("not a metric event", *problems)
    event = Event(float(data["timestamp"]), data["event_id"], data["metric"], float(data["value"]))
    return EventRecord(data["environment"], data["targeting_key"], event)


def _record(raw: bytes | None) -> dict[str, Any] | Rejection:
    data = parse_json(raw or b"")
    if isinstance(data, Unacceptable):
        return Rejection.malformed(data.message)
    if not isinstance(data, dict):
        return Rejection.malformed("a record is a JSON object")
    if data.get("schema") != SCHEMA_VERSION:
        return Rejection.malformed(f"schema must be {SCHEMA_VERSION}", ("$.schema", "unknown"))
    return data


def _texts(data: dict[str, Any], names: tuple[str, ...]) -> list[tuple[str, str]]:
    return [
        (f"$.{name}", f"must be a string of 1-{MAX_TEXT} characters")
        for name in names
        if not isinstance(data.get(name), str) or not 0 < len(data[name]) <= MAX_TEXT
    ]


def _timestamp(data: dict[str, Any]) -> list[tuple[str, str]]:
    if _number_within(data.get("timestamp"), 0.0, MAX_TIMESTAMP) and data["timestamp"] > 0:
        return []
    return [("$.timestamp", f"must be unix seconds in (0, {MAX_TIMESTAMP:.0f}]")]


def _value(data: dict[str, Any]) -> list[tuple[str, str]]:
    if _number_within(data.get("value"), -MAX_VALUE, MAX_VALUE):
        return []
    return [("$.value", f"must be a finite number of at most {MAX_VALUE:g} in size")]


def _number_within(value: Any, low: float, high: float) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )
