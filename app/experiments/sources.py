"""The records the experiment fold reads, decoded at the edge: `exposures` and `metric-events`.

A record that is not what its topic carries is a value (`Rejection`), never an exception, so
the consumer can park it as a dead letter and go on; what decodes is exactly what the
producers write (`app.experiments.exposures.to_json`, `app.experiments.metric_events.to_json`),
which the tests check by round trip.
"""

from __future__ import annotations

import math
from typing import Any

from app.experiments.attribution import Event, Exposure
from app.experiments.fold import EventRecord, ExposureRecord
from app.infra.json_input import Unacceptable, parse_json
from app.infra.records import SCHEMA_VERSION, Rejection

__all__ = ["decode_exposure", "decode_metric_event"]

_EXPOSURE_TEXT = ("environment", "experiment", "targeting_key", "variant", "exposure_id")
_EVENT_TEXT = ("environment", "targeting_key", "metric", "event_id")


def decode_exposure(raw: bytes | None) -> ExposureRecord | Rejection:
    data = _record(raw)
    if isinstance(data, Rejection):
        return data
    problems = _texts(data, _EXPOSURE_TEXT) + _number(data, "timestamp")
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
    problems = _texts(data, _EVENT_TEXT) + _number(data, "timestamp") + _number(data, "value")
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
        (f"$.{name}", "must be a non-empty string")
        for name in names
        if not isinstance(data.get(name), str) or not data[name]
    ]


def _number(data: dict[str, Any], name: str) -> list[tuple[str, str]]:
    value = data.get(name)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return []
    return [(f"$.{name}", "must be a finite number")]
