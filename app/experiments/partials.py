"""The `experiment-stats` records: each source partition's totals per experiment, and its lag.

The owner of source partition p publishes, for every experiment whose totals changed, a
`Partial` keyed `[environment, experiment, p]` (compacted: the newest per key is the state of
that partition), and once a second a `Progress` keyed `[p]`: how far it has folded and how far
behind the end of the sources it was. Any worker merges an experiment's partials into its
results (app/experiments/results.py `merge`); a notebook can read the same topic as the
warehouse feed (docs/experiments.md). Decoding is at the edge: anything else is a `Rejection`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from app.experiments.attribution import Totals, VariantTotals
from app.experiments.stats import MetricKind
from app.infra.json_input import Unacceptable, parse_json
from app.infra.records import SCHEMA_VERSION, Rejection

__all__ = [
    "Partial",
    "Progress",
    "decode_stats_record",
    "encode_partial",
    "encode_progress",
    "totals_from",
    "totals_json",
]


@dataclass(frozen=True, slots=True)
class Partial:
    """One source partition's totals of one experiment, as folded to `offsets`."""

    environment: str
    experiment: str
    partition: int
    totals: Totals
    metrics: dict[str, MetricKind]  # the declarations the totals were computed with
    offsets: dict[str, int]  # per source topic: the next offset to fold
    folded_at: float  # unix seconds of the fold that produced these totals


@dataclass(frozen=True, slots=True)
class Progress:
    """How far the owner of a source partition has folded it, and how far behind it was."""

    partition: int
    offsets: dict[str, int]
    behind: int  # records between the folded offsets and the sources' ends, when published
    at: float  # unix seconds


def encode_partial(partial: Partial) -> tuple[bytes, bytes]:
    key = orjson.dumps([partial.environment, partial.experiment, partial.partition])
    value = {
        "schema": SCHEMA_VERSION,
        "environment": partial.environment,
        "experiment": partial.experiment,
        "partition": partial.partition,
        "variants": totals_json(partial.totals),
        "metrics": {metric: str(kind) for metric, kind in sorted(partial.metrics.items())},
        "offsets": partial.offsets,
        "folded_at": partial.folded_at,
    }
    return key, orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def encode_progress(progress: Progress) -> tuple[bytes, bytes]:
    value = {
        "schema": SCHEMA_VERSION,
        "partition": progress.partition,
        "offsets": progress.offsets,
        "behind": progress.behind,
        "at": progress.at,
    }
    return orjson.dumps([progress.partition]), orjson.dumps(value)


def decode_stats_record(raw: bytes | None) -> Partial | Progress | Rejection:
    """A record of `experiment-stats` (its value), or why it is not one."""
    data = parse_json(raw or b"")
    if isinstance(data, Unacceptable):
        return Rejection.malformed(data.message)
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_VERSION:
        return Rejection.malformed(f"an object with schema {SCHEMA_VERSION}")
    try:
        if "experiment" in data:
            return _partial(data)
        return Progress(
            _count(data["partition"]),
            _offsets(data["offsets"]),
            _count(data["behind"]),
            _finite(data["at"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        return Rejection.malformed(f"not an experiment-stats record: {exc!r}")


def _partial(data: dict[str, Any]) -> Partial:
    environment, experiment = data["environment"], data["experiment"]
    if not isinstance(environment, str) or not isinstance(experiment, str):
        raise TypeError("environment and experiment are strings")
    metrics = {str(metric): MetricKind(kind) for metric, kind in data["metrics"].items()}
    return Partial(
        environment,
        experiment,
        _count(data["partition"]),
        totals_from(data["variants"]),
        metrics,
        _offsets(data["offsets"]),
        _finite(data["folded_at"]),
    )


def totals_json(totals: Totals) -> dict[str, Any]:
    """Per variant: [subjects, exposures, crossovers, Σx by metric, Σx² by metric, exposures
    by window start]."""
    return {
        variant: [t.subjects, t.exposures, t.crossovers, t.sums, t.squares, t.windows]
        for variant, t in totals.variants.items()
    }


def totals_from(data: Any) -> Totals:
    """The inverse of `totals_json` (after a JSON round trip); TypeError/ValueError if not."""
    if not isinstance(data, dict):
        raise TypeError("variants are an object")
    variants = {}
    for variant, fields in data.items():
        subjects, exposures, crossovers, sums, squares, windows = fields
        variants[str(variant)] = VariantTotals(
            _count(subjects),
            _count(exposures),
            _count(crossovers),
            {str(m): _finite(v) for m, v in sums.items()},
            {str(m): _finite(v) for m, v in squares.items()},
            {int(start): _count(count) for start, count in windows.items()},
        )
    return Totals(variants)


def _offsets(data: Any) -> dict[str, int]:
    if not isinstance(data, dict):
        raise TypeError("offsets are an object")
    return {str(source): _count(offset) for source, offset in data.items()}


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value


def _finite(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return float(value)
