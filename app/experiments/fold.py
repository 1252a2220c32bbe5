"""Folding one source partition's exposures and metric events into its attribution state.

For each record: skip it when its source offset is already folded (a redelivery), update the
subject's state, and move the totals of every experiment it touches by the change of the
subject's contribution (app/experiments/attribution.py). An exposure is per (environment,
experiment, subject); a metric event is per (environment, subject) and counts in every
experiment the subject was exposed to that declares its metric, so events are kept once per
subject and the subject's experiments are indexed.

The state of partition p, by key (names are JSON arrays, so any character is safe):
    x[env, experiment, subject]  first exposure, variants seen, exposures   } logged to the
    e[env, subject]              the subject's metric events (deduped)      } changelog, each
    s[env, experiment]           exposures per variant and time window      } with `upto`
    i[env, subject]              the experiments the subject was exposed to } derived from x
    t[env, experiment]           the totals per variant, and the metrics    } and e: rebuilt
                                 declarations they were computed with       } after a restore
and the next offset to fold of each source, written with the state in one RocksDB batch, so a
crash loses or repeats nothing locally.

The changelog (`experiment-state`, agents/experiments.py) carries the x, e and s values and,
last in each batch, the sources' offsets. A worker can die with a batch half produced: then
some keys hold the batch and the offsets do not. Each logged value therefore says up to which
source offset it is folded (`upto`), and a record at or above the partition's offsets is
applied only to the keys that do not hold it yet; i and t are rebuilt from x and e after a
restore (`rebuild`), so they agree with them whatever part of a batch was logged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

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

__all__ = [
    "CHANGELOG_OFFSETS_KEY",
    "RESENT_IDS",
    "EventRecord",
    "ExposureRecord",
    "Folded",
    "MetricsOf",
    "PartitionFold",
    "Sourced",
]

MetricsOf = Callable[[str, str], Mapping[str, MetricKind] | None]
"""(environment, experiment) -> the metrics it declares; None when no live flag runs the
experiment (deleted, or not an experiment any more): its totals keep the declarations they
were computed with."""

CHANGELOG_OFFSETS_KEY: Final = "o"  # the changelog record of the sources' offsets
_LOGGED: Final = ("x", "e", "s")  # the kinds of key the changelog carries
# An exposure sent again under its id (a producer retry where the broker has no idempotent
# producer) counts once: the ids of a subject's newest RESENT_IDS exposures of an experiment
# are kept (their first RESENT_ID_CHARS hex digits: 64 random bits), with the offset each was
# counted at. A retry resends a batch within seconds, long before a subject has been exposed
# that many more times; a copy sent later than that would count again (and say so nowhere).
RESENT_IDS: Final = 64
RESENT_ID_CHARS: Final = 16


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


@dataclass(slots=True)
class Folded:
    """A batch folded, not written yet: the values, the sources' next offsets, what changed."""

    partition: int
    puts: dict[str, bytes] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    experiments: set[tuple[str, str]] = field(default_factory=set)  # whose totals may change

    def changelog(self) -> list[tuple[bytes, bytes]]:
        """The changelog records of this batch: the logged values, then the offsets."""
        records = [(key.encode(), value) for key, value in self.puts.items() if key[0] in _LOGGED]
        if self.offsets:
            records.append((CHANGELOG_OFFSETS_KEY.encode(), orjson.dumps(self.offsets)))
        return records


def _key(kind: str, *names: str) -> str:
    return kind + orjson.dumps(names).decode()


def _subjects_of(environment: str, experiment: str) -> str:
    """The prefix of the x keys of one experiment's subjects."""
    return "x" + orjson.dumps([environment, experiment]).decode()[:-1] + ","


class PartitionFold:
    """Attribution state of the partitions this worker owns, folded batch by batch."""

    def __init__(
        self,
        store: PartitionState,
        metrics_of: MetricsOf,
        window_s: float,
        series_window_s: int = 60,
        series_windows: int | None = None,
    ) -> None:
        self.store = store
        self.metrics_of = metrics_of
        self.window_s = window_s  # attribution window
        self.series_window_s = series_window_s  # exposures per window: the time series
        self.series_windows = series_windows  # the newest kept (None: MAX_WINDOWS)

    def fold(self, partition: int, batch: Iterable[Sourced]) -> Folded:
        """Fold `batch` (in offset order per source) over the partition's state; write nothing."""
        run = _Run(self, partition)
        for item in batch:
            if item.offset < run.next_offset(item.source):
                continue  # folded before: a redelivery
            if isinstance(item.record, ExposureRecord):
                run.exposure(item.record, item.offset)
            else:
                run.event(item.record, item.offset)
            run.folded.offsets[item.source] = item.offset + 1
        return run.finish()

    def commit(self, folded: Folded, extra_offsets: Mapping[str, int] | None = None) -> None:
        """Write a folded batch and its offsets (and e.g. the changelog's) in one batch."""
        offsets = {**folded.offsets, **(extra_offsets or {})}
        self.store.apply(folded.partition, folded.puts, offsets)

    def apply(self, partition: int, batch: Iterable[Sourced]) -> Folded:
        folded = self.fold(partition, batch)
        self.commit(folded)
        return folded

    def offsets(self, partition: int, sources: Iterable[str]) -> dict[str, int]:
        return {source: self.store.offset(partition, source) for source in sources}

    def totals(self, partition: int, environment: str, experiment: str) -> Totals:
        """The experiment's totals in this partition, with its exposures per window."""
        raw = self.store.get(partition, _key("t", environment, experiment))
        totals = Totals() if raw is None else _totals_from(orjson.loads(raw))
        series = self.store.get(partition, _key("s", environment, experiment))
        if series is not None:
            for variant, windows in orjson.loads(series)["variants"].items():
                into = totals.variants.setdefault(variant, VariantTotals())
                into.windows = {int(start): count for start, count in windows.items()}
        return totals

    def declared(self, partition: int, environment: str, experiment: str) -> dict[str, str]:
        """The metric declarations the partition's totals of the experiment were computed with."""
        raw = self.store.get(partition, _key("t", environment, experiment))
        return {} if raw is None else dict(orjson.loads(raw)["metrics"])

    def restore(self, partition: int, records: Iterable[tuple[bytes, bytes]]) -> int:
        """Apply changelog records of the partition: each logged value that is newer than the
        local one (its `upto` is higher), and the highest offsets. Returns how many applied;
        call `rebuild` after any."""
        puts: dict[str, bytes] = {}
        offsets: dict[str, int] = {}
        for raw_key, value in records:
            key = raw_key.decode()
            if key == CHANGELOG_OFFSETS_KEY:
                for source, offset in orjson.loads(value).items():
                    if offset > max(offsets.get(source, 0), self.store.offset(partition, source)):
                        offsets[source] = offset
            elif key[:1] in _LOGGED and key[1:2] == "[":
                local = puts.get(key) or self.store.get(partition, key)
                if local is None or orjson.loads(value)["upto"] > orjson.loads(local)["upto"]:
                    puts[key] = value
        self.store.apply(partition, puts, offsets)
        return len(puts) + len(offsets)

    def rebuild(self, partition: int) -> set[tuple[str, str]]:
        """Rebuild the index and the totals of the partition from its subjects' states; returns
        the experiments."""
        stored = {
            tuple(orjson.loads(key[1:])): _kinds(orjson.loads(raw)["metrics"])
            for key, raw in self.store.scan(partition, "t[")
        }
        declared: dict[tuple[str, str], Mapping[str, MetricKind]] = {}
        self.store.delete_prefix(partition, "t[")
        self.store.delete_prefix(partition, "i[")
        index: dict[str, set[str]] = {}
        totals: dict[tuple[str, str], Totals] = {}
        for key, raw in self.store.scan(partition, "x["):
            environment, experiment, subject = orjson.loads(key[1:])
            at = (environment, experiment)
            if at not in declared:
                current = self.metrics_of(environment, experiment)
                declared[at] = stored.get(at, {}) if current is None else current
            metrics = declared[at]
            state = _subject_from(orjson.loads(raw), self._events(partition, environment, subject))
            part = contribution(state, metrics, self.window_s)
            totals.setdefault((environment, experiment), Totals()).move(None, part)
            index.setdefault(_key("i", environment, subject), set()).add(experiment)
        puts = {key: orjson.dumps(sorted(names)) for key, names in index.items()}
        for at, experiment_totals in totals.items():
            puts[_key("t", *at)] = _totals_json(experiment_totals, declared[at])
        self.store.apply(partition, puts, {})
        return set(totals)

    def refresh(self, partition: int) -> set[tuple[str, str]]:
        """Rebuild the totals of the partition's experiments whose metric declarations changed
        (a partition with no new records would keep the old ones); returns those experiments."""
        run = _Run(self, partition)
        for key, raw in self.store.scan(partition, "t["):
            environment, experiment = orjson.loads(key[1:])
            current = self.metrics_of(environment, experiment)
            if current is not None and orjson.loads(raw)["metrics"] != _declarations(current):
                run.load(environment, experiment)
        folded = run.finish()
        self.store.apply(partition, folded.puts, {})
        return folded.experiments

    def _events(self, partition: int, environment: str, subject: str) -> Any:
        raw = self.store.get(partition, _key("e", environment, subject))
        return _NO_EVENTS if raw is None else orjson.loads(raw)


_NO_EVENTS: Final[dict[str, Any]] = {"events": [], "dropped": 0, "upto": 0}


class _Run:
    """One batch: reads through what it has folded, writes nothing."""

    def __init__(self, fold: PartitionFold, partition: int) -> None:
        self.fold = fold
        self.partition = partition
        self.folded = Folded(partition)
        self.totals: dict[tuple[str, str], Totals] = {}
        self.metrics: dict[tuple[str, str], Mapping[str, MetricKind]] = {}
        self.series: dict[tuple[str, str], Any] = {}

    def next_offset(self, source: str) -> int:
        offsets = self.folded.offsets
        if source not in offsets:
            offsets[source] = self.fold.store.offset(self.partition, source)
        return offsets[source]

    def _get(self, key: str) -> Any:
        raw = self.folded.puts.get(key) or self.fold.store.get(self.partition, key)
        return None if raw is None else orjson.loads(raw)

    def _put(self, key: str, value: Any) -> None:
        self.folded.puts[key] = orjson.dumps(value)

    def load(self, environment: str, experiment: str) -> Totals:
        """The experiment's totals in this batch (loaded, or rebuilt if declarations changed)."""
        return self._totals(environment, experiment)

    def _totals(self, environment: str, experiment: str) -> Totals:
        at = (environment, experiment)
        if at not in self.totals:
            self.totals[at] = self._load_totals(environment, experiment)
            self.folded.experiments.add(at)
        return self.totals[at]

    def _load_totals(self, environment: str, experiment: str) -> Totals:
        """The stored totals, or rebuilt when the experiment's metric declarations changed
        since they were computed (a subject's contribution depends on them)."""
        raw = self._get(_key("t", environment, experiment))
        current = self.fold.metrics_of(environment, experiment)
        if current is None:  # no live flag runs it now: keep the declarations it had
            current = {} if raw is None else _kinds(raw["metrics"])
        metrics = self.metrics[(environment, experiment)] = current
        if raw is not None and raw["metrics"] == _declarations(metrics):
            return _totals_from(raw)
        totals = Totals()
        for key, value in self.fold.store.scan(
            self.partition, _subjects_of(environment, experiment)
        ):
            subject = orjson.loads(key[1:])[2]
            events = self._get(_key("e", environment, subject)) or _NO_EVENTS
            state = _subject_from(self._get(key) or orjson.loads(value), events)
            totals.move(None, contribution(state, metrics, self.fold.window_s))
        return totals

    def _move(
        self, environment: str, experiment: str, before: SubjectState, after: SubjectState
    ) -> None:
        totals = self._totals(environment, experiment)
        metrics = self.metrics[(environment, experiment)]
        window = self.fold.window_s
        totals.move(contribution(before, metrics, window), contribution(after, metrics, window))

    def exposure(self, record: ExposureRecord, offset: int) -> None:
        env, experiment, subject = record.environment, record.experiment, record.subject
        x_key = _key("x", env, experiment, subject)
        exposed = self._get(x_key)
        ident = record.exposure.exposure_id[:RESENT_ID_CHARS]
        recent: list[list[Any]] = [] if exposed is None else exposed["recent"]
        if exposed is not None and exposed["upto"] > offset:
            # In x already (see module doc); in s too unless s's part of the batch was lost.
            if [ident, offset] in recent:  # counted, not dropped as sent again
                self._count(record, offset)
            return
        if any(seen == ident for seen, _ in recent):  # sent again under its id: a retry
            self._put(x_key, {**exposed, "upto": offset + 1})
            return
        events = self._get(_key("e", env, subject)) or _NO_EVENTS
        before = _subject_from(exposed, events)
        after = apply_exposure(before, record.exposure)
        self._move(env, experiment, before, after)
        recent = [*recent[-(RESENT_IDS - 1) :], [ident, offset]]
        self._put(x_key, _exposed_json(after, offset + 1, recent))
        if exposed is None:  # a new subject of this experiment: index it
            index_key = _key("i", env, subject)
            self._put(index_key, sorted({*(self._get(index_key) or []), experiment}))
        self._count(record, offset)

    def _count(self, record: ExposureRecord, offset: int) -> None:
        """One more exposure served in its variant's time window (unless already counted)."""
        at = (record.environment, record.experiment)
        if at not in self.series:
            stored = self._get(_key("s", *at)) or {"upto": 0, "variants": {}}
            windows = Totals(
                {
                    variant: VariantTotals(windows={int(s): n for s, n in counts.items()})
                    for variant, counts in stored["variants"].items()
                }
            )
            self.series[at] = [stored["upto"], windows]
        upto, windows = self.series[at]
        if offset >= upto:
            windows.count_exposure(
                record.exposure, self.fold.series_window_s, self.fold.series_windows
            )
            self.series[at][0] = offset + 1
            self.folded.experiments.add(at)

    def event(self, record: EventRecord, offset: int) -> None:
        env, subject = record.environment, record.subject
        e_key = _key("e", env, subject)
        events = self._get(e_key) or _NO_EVENTS
        if events["upto"] > offset:
            return  # in e already (see module doc)
        had = _subject_from(None, events)
        kept = apply_event(had, record.event)
        self._put(e_key, _events_json(kept, offset + 1))
        if kept == had:
            return  # a resent event: nothing else changes
        for experiment in self._get(_key("i", env, subject)) or []:
            exposed = _subject_from(self._get(_key("x", env, experiment, subject)), events)
            after = SubjectState(
                exposed.first, exposed.variants, exposed.exposures, kept.events, kept.dropped
            )
            self._move(env, experiment, exposed, after)

    def finish(self) -> Folded:
        for at, totals in self.totals.items():
            self.folded.puts[_key("t", *at)] = _totals_json(totals, self.metrics[at])
        for at, (upto, windows) in self.series.items():
            series = {v: t.windows for v, t in windows.variants.items()}
            self.folded.puts[_key("s", *at)] = orjson.dumps(
                {"upto": upto, "variants": series}, option=orjson.OPT_NON_STR_KEYS
            )
        return self.folded


def _kinds(declarations: Mapping[str, str]) -> dict[str, MetricKind]:
    return {metric: MetricKind(kind) for metric, kind in declarations.items()}


def _declarations(metrics: Mapping[str, MetricKind]) -> dict[str, str]:
    return {metric: str(kind) for metric, kind in sorted(metrics.items())}


def _exposed_json(state: SubjectState, upto: int, recent: list[list[Any]]) -> dict[str, Any]:
    first = state.first
    return {
        "recent": recent,
        "first": None
        if first is None
        else [first.timestamp, first.exposure_id, first.variant, first.version],
        "variants": sorted(state.variants),
        "exposures": state.exposures,
        "upto": upto,
    }


def _events_json(state: SubjectState, upto: int) -> dict[str, Any]:
    events = [[e.timestamp, e.event_id, e.metric, e.value] for e in state.events]
    return {"events": events, "dropped": state.dropped, "upto": upto}


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


def _totals_json(totals: Totals, metrics: Mapping[str, MetricKind]) -> bytes:
    variants = {
        variant: [t.subjects, t.exposures, t.crossovers, t.sums, t.squares]
        for variant, t in totals.variants.items()
    }
    return orjson.dumps({"metrics": _declarations(metrics), "variants": variants})


def _totals_from(data: dict[str, Any]) -> Totals:
    return Totals(
        {
            variant: VariantTotals(subjects, exposures, crossovers, dict(sums), dict(squares))
            for variant, (subjects, exposures, crossovers, sums, squares) in data[
                "variants"
            ].items()
        }
    )
