"""Folding one source partition's exposures and metric events into its attribution state.

For each record: skip it when its source offset is already folded (a redelivery), update the
subject's state, and move the totals of every experiment it touches by the change of the
subject's contribution (app/experiments/attribution.py). A batch is written at once with the
offsets it brings each source to (tables/partition_state.py), so a crash loses or repeats no
record. An exposure is per (environment, experiment, subject); a metric event is per
(environment, subject) and counts in every experiment the subject was exposed to that declares
its metric, so events are kept once per subject and the subject's experiments are indexed.

Keys are JSON arrays (`x["dev","exp","ann"]`): names may hold any character.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from app.experiments.attribution import (
    Event,
    Exposure,
    SubjectState,
    Totals,
    VariantTotals,
    apply_event,
    apply_exposure,
    contribution,
)
from app.experiments.stats import MetricKind
from tables.partition_state import PartitionState

__all__ = ["EventRecord", "ExposureRecord", "MetricsOf", "PartitionFold", "Sourced"]

MetricsOf = Callable[[str, str], Mapping[str, MetricKind]]
"""(environment, experiment) -> the metrics it declares."""


@dataclass(frozen=True, slots=True)
class ExposureRecord:
    environment: str
    experiment: str
    subject: str
    exposure: Exposure


@dataclass(frozen=True, slots=True)
class EventRecord:
    environment: str
    subject: str
    event: Event


@dataclass(frozen=True, slots=True)
class Sourced:
    """A decoded record and where it was read: its topic and offset."""

    source: str
    offset: int
    record: ExposureRecord | EventRecord


def _key(kind: str, *names: str) -> str:
    return kind + orjson.dumps(names).decode()


class PartitionFold:
    """Attribution state of the partitions this worker owns, folded batch by batch."""

    def __init__(
        self,
        store: PartitionState,
        metrics_of: MetricsOf,
        window_s: float,
        series_window_s: int = 60,
    ) -> None:
        self.store = store
        self.metrics_of = metrics_of
        self.window_s = window_s  # attribution window
        self.series_window_s = series_window_s  # exposures per window: the time series

    def apply(self, partition: int, batch: Iterable[Sourced]) -> None:
        """Fold `batch` (in offset order per source) and write it with its offsets at once."""
        run = _Run(self, partition)
        for item in batch:
            if item.offset < run.next_offset(item.source):
                continue  # folded before: a redelivery
            if isinstance(item.record, ExposureRecord):
                run.exposure(item.record)
            else:
                run.event(item.record)
            run.offsets[item.source] = item.offset + 1
        run.write()

    def totals(self, partition: int, environment: str, experiment: str) -> Totals:
        raw = self.store.get(partition, _key("t", environment, experiment))
        return Totals() if raw is None else _totals_from(orjson.loads(raw))


class _Run:
    """One batch: reads through what it has written, writes everything at the end."""

    def __init__(self, fold: PartitionFold, partition: int) -> None:
        self.fold = fold
        self.partition = partition
        self.puts: dict[str, bytes] = {}
        self.offsets: dict[str, int] = {}
        self.totals: dict[tuple[str, str], Totals] = {}

    def next_offset(self, source: str) -> int:
        if source not in self.offsets:
            self.offsets[source] = self.fold.store.offset(self.partition, source)
        return self.offsets[source]

    def _get(self, key: str) -> Any:
        raw = self.puts.get(key) or self.fold.store.get(self.partition, key)
        return None if raw is None else orjson.loads(raw)

    def _totals(self, environment: str, experiment: str) -> Totals:
        at = (environment, experiment)
        if at not in self.totals:
            self.totals[at] = self.fold.totals(self.partition, environment, experiment)
        return self.totals[at]

    def _subject(self, environment: str, experiment: str, subject: str) -> SubjectState:
        exposed = self._get(_key("x", environment, experiment, subject))
        events = self._get(_key("e", environment, subject)) or {"events": [], "dropped": 0}
        return _subject_from(exposed, events)

    def _move(
        self, environment: str, experiment: str, before: SubjectState, after: SubjectState
    ) -> None:
        metrics = self.fold.metrics_of(environment, experiment)
        window = self.fold.window_s
        self._totals(environment, experiment).move(
            contribution(before, metrics, window), contribution(after, metrics, window)
        )

    def exposure(self, record: ExposureRecord) -> None:
        env, experiment, subject = record.environment, record.experiment, record.subject
        before = self._subject(env, experiment, subject)
        after = apply_exposure(before, record.exposure)
        self._move(env, experiment, before, after)
        self._totals(env, experiment).count_exposure(record.exposure, self.fold.series_window_s)
        self.puts[_key("x", env, experiment, subject)] = orjson.dumps(_exposed_json(after))
        if before.first is None:  # a new subject of this experiment: index it
            index_key = _key("i", env, subject)
            experiments = self._get(index_key) or []
            self.puts[index_key] = orjson.dumps(sorted({*experiments, experiment}))

    def event(self, record: EventRecord) -> None:
        env, subject = record.environment, record.subject
        events = self._get(_key("e", env, subject)) or {"events": [], "dropped": 0}
        had = _subject_from(None, events)
        kept = apply_event(had, record.event)
        if kept == had:
            return  # a resent event: nothing changes
        self.puts[_key("e", env, subject)] = orjson.dumps(_events_json(kept))
        for experiment in self._get(_key("i", env, subject)) or []:
            exposed = _subject_from(self._get(_key("x", env, experiment, subject)), events)
            after = replace(exposed, events=kept.events, dropped=kept.dropped)
            self._move(env, experiment, exposed, after)

    def write(self) -> None:
        for (environment, experiment), totals in self.totals.items():
            key = _key("t", environment, experiment)
            self.puts[key] = orjson.dumps(_totals_json(totals), option=orjson.OPT_NON_STR_KEYS)
        self.fold.store.apply(self.partition, self.puts, self.offsets)


def _exposed_json(state: SubjectState) -> dict[str, Any]:
    first = state.first
    return {
        "first": None
        if first is None
        else [first.timestamp, first.exposure_id, first.variant, first.version],
        "variants": sorted(state.variants),
        "exposures": state.exposures,
    }


def _events_json(state: SubjectState) -> dict[str, Any]:
    events = [[e.timestamp, e.event_id, e.metric, e.value] for e in state.events]
    return {"events": events, "dropped": state.dropped}


def _subject_from(exposed: Any, events: Any) -> SubjectState:
    first = None
    if exposed is not None and exposed["first"] is not None:
        timestamp, exposure_id, variant, version = exposed["first"]
        first = Exposure(timestamp, exposure_id, variant, version)
    return SubjectState(
        first=first,
        variants=frozenset(exposed["variants"]) if exposed is not None else frozenset(),
        exposures=exposed["exposures"] if exposed is not None else 0,
        events=tuple(Event(t, i, m, v) for t, i, m, v in events["events"]),
        dropped=events["dropped"],
    )


def _totals_json(totals: Totals) -> dict[str, Any]:
    return {
        variant: [t.subjects, t.exposures, t.crossovers, t.sums, t.squares, t.windows]
        for variant, t in totals.variants.items()
    }


def _totals_from(data: dict[str, Any]) -> Totals:
    return Totals(
        {
            variant: VariantTotals(
                subjects,
                exposures,
                crossovers,
                dict(sums),
                dict(squares),
                {int(start): count for start, count in windows.items()},
            )
            for variant, (subjects, exposures, crossovers, sums, squares, windows) in data.items()
        }
    )
