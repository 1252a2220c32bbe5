"""Per-subject attribution: what one subject of an experiment contributes to its results.

A subject's state is folded from its exposures and metric events, and the experiment's sufficient
statistics (`Totals`) change by the difference between the subject's contribution before and
after each record. The fold is pure and does not depend on the order the records come in: the
two topics they come from interleave differently after a crash or a rebalance, and the results
must be the same whatever the interleaving (docs/experiments.md, "Exactly once").

The rules, each chosen so that order cannot matter:
- The subject's variant is the one of its *first* exposure: the smallest (timestamp, exposure
  id), not the first processed. A subject exposed to two variants is kept in the first and
  counted as a crossover (a health figure).
- A metric event counts iff its timestamp is within [first exposure, first exposure + window].
  Events before the first exposure are ignored; events of a subject not exposed yet are kept
  until its exposure arrives. An event id seen before is a duplicate and changes nothing.
- The subject's value of a metric is the sum of its counted values; for a conversion metric,
  1 if any event counts, else 0. Every exposed subject counts in n, with 0 when it has no event.
- At most `MAX_EVENTS` events are kept per subject; more are dropped and counted (`dropped`):
  the one place where order matters, past a thousand events of one subject.
Repeated exposures (new exposure ids) are counted as exposures, never as new subjects;
redelivered records are skipped before they get here (by their source offset).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from app.experiments.stats import MetricKind

__all__ = [
    "MAX_EVENTS",
    "MAX_WINDOWS",
    "Contribution",
    "Event",
    "Exposure",
    "SubjectState",
    "Totals",
    "VariantTotals",
    "apply_event",
    "apply_exposure",
    "contribution",
]

MAX_EVENTS: Final = 1000
# Time windows of exposure counts kept per variant, the newest (a day of minute windows), by
# default; the worker keeps FLAGSTREAM_SERIES_RETENTION_S / FLAGSTREAM_SERIES_WINDOW_S.
MAX_WINDOWS: Final = 1440


@dataclass(frozen=True, slots=True, order=True)
class Exposure:
    """One exposure of the subject: ordered by (timestamp, exposure id), the first one wins."""

    timestamp: float
    exposure_id: str
    variant: str
    version: int


@dataclass(frozen=True, slots=True, order=True)
class Event:
    """One metric event of the subject."""

    timestamp: float
    event_id: str
    metric: str
    value: float


@dataclass(frozen=True, slots=True)
class SubjectState:
    first: Exposure | None = None
    variants: frozenset[str] = frozenset()
    exposures: int = 0
    events: tuple[Event, ...] = ()  # sorted; every event kept, counted or not (see module doc)
    dropped: int = 0  # events over MAX_EVENTS, not kept

    @property
    def crossover(self) -> bool:
        return len(self.variants) > 1


@dataclass(frozen=True, slots=True)
class Contribution:
    """What a subject adds to its variant's totals: one subject, its exposures, its values."""

    variant: str
    exposures: int
    crossover: bool
    values: tuple[tuple[str, float], ...]  # (metric, value), by metric


def apply_exposure(state: SubjectState, exposure: Exposure) -> SubjectState:
    first = exposure if state.first is None or exposure < state.first else state.first
    return SubjectState(
        first, state.variants | {exposure.variant}, state.exposures + 1, state.events, state.dropped
    )


def apply_event(state: SubjectState, event: Event) -> SubjectState:
    """The state with `event` kept. An event id seen before keeps one event, the smaller of
    the two (a resent event is the same event; should two differ, the choice still does not
    depend on their order)."""
    same = next((kept for kept in state.events if kept.event_id == event.event_id), None)
    if same is not None:
        if event >= same:
            return state
        others = (kept for kept in state.events if kept is not same)
        return SubjectState(
            state.first,
            state.variants,
            state.exposures,
            tuple(sorted((*others, event))),
            state.dropped,
        )
    if len(state.events) >= MAX_EVENTS:
        return SubjectState(
            state.first, state.variants, state.exposures, state.events, state.dropped + 1
        )
    events = tuple(sorted((*state.events, event)))
    return SubjectState(state.first, state.variants, state.exposures, events, state.dropped)


def contribution(
    state: SubjectState, metrics: Mapping[str, MetricKind], window_s: float
) -> Contribution | None:
    """The subject's contribution to its variant, None before its first exposure."""
    first = state.first
    if first is None:
        return None
    end = first.timestamp + window_s
    sums = dict.fromkeys(metrics, 0.0)
    for event in state.events:
        if event.metric in sums and first.timestamp <= event.timestamp <= end:
            if metrics[event.metric] is MetricKind.CONVERSION:
                sums[event.metric] = 1.0
            else:
                sums[event.metric] += event.value
    return Contribution(
        first.variant, state.exposures, state.crossover, tuple(sorted(sums.items()))
    )


@dataclass(slots=True)
class VariantTotals:
    """The sufficient statistics of one variant: subjects, exposures, crossovers, and per
    metric the sum and the sum of squares of the subjects' values."""

    subjects: int = 0
    exposures: int = 0
    crossovers: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    squares: dict[str, float] = field(default_factory=dict)
    # Exposures served of this variant per time window (its start, unix seconds): a time
    # series. Each exposure counts where it was served, whichever variant its subject is in.
    windows: dict[int, int] = field(default_factory=dict)

    def add(self, part: Contribution, sign: int) -> None:
        self.subjects += sign
        self.exposures += sign * part.exposures
        self.crossovers += sign * part.crossover
        for metric, value in part.values:
            self.sums[metric] = self.sums.get(metric, 0.0) + sign * value
            self.squares[metric] = self.squares.get(metric, 0.0) + sign * value * value


@dataclass(slots=True)
class Totals:
    """An experiment's totals per variant, kept by difference as subjects change."""

    variants: dict[str, VariantTotals] = field(default_factory=dict)

    def move(self, before: Contribution | None, after: Contribution | None) -> None:
        """Replace a subject's contribution `before` by `after` (None: no contribution)."""
        if before == after:
            return
        if before is not None:
            self.variants.setdefault(before.variant, VariantTotals()).add(before, -1)
        if after is not None:
            self.variants.setdefault(after.variant, VariantTotals()).add(after, +1)

    def count_exposure(
        self, exposure: Exposure, window_s: int, max_windows: int | None = None
    ) -> None:
        """One more exposure in its variant's window; only the newest `max_windows` are kept
        (the oldest go first, so what is kept does not depend on arrival order)."""
        windows = self.variants.setdefault(exposure.variant, VariantTotals()).windows
        start = int(exposure.timestamp // window_s) * window_s
        windows[start] = windows.get(start, 0) + 1
        if len(windows) > (MAX_WINDOWS if max_windows is None else max_windows):
            del windows[min(windows)]
