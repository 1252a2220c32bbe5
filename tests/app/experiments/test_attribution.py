"""The attribution fold against the truth computed from the set of records, in any order."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from app.experiments.attribution import (
    Contribution,
    Event,
    Exposure,
    SubjectState,
    Totals,
    apply_event,
    apply_exposure,
    contribution,
)
from app.experiments.stats import MetricKind

METRICS = {"buy": MetricKind.CONVERSION, "spend": MetricKind.MEAN}
WINDOW = 10.0
Record = tuple[str, Exposure | Event]  # (subject, record)

exposures = st.builds(
    Exposure,
    timestamp=st.integers(0, 20).map(float),
    exposure_id=st.sampled_from(["x1", "x2", "x3", "x4"]),
    variant=st.sampled_from(["control", "a", "b"]),
    version=st.just(1),
)
events = st.builds(
    Event,
    timestamp=st.integers(0, 40).map(float),
    event_id=st.sampled_from(["e1", "e2", "e3", "e4", "e5"]),
    metric=st.sampled_from(["buy", "spend", "undeclared"]),
    value=st.sampled_from([1.0, 0.5, 2.25, -3.0]),
)
records = st.lists(
    st.tuples(st.sampled_from(["s1", "s2", "s3"]), st.one_of(exposures, events)), max_size=40
)


def fold(stream: Sequence[Record]) -> Totals:
    """What the pipeline does: each record changes one subject and the totals by difference."""
    states: dict[str, SubjectState] = defaultdict(SubjectState)
    totals = Totals()
    for subject, record in stream:
        before = states[subject]
        if isinstance(record, Exposure):
            after = apply_exposure(before, record)
        else:
            after = apply_event(before, record)
        states[subject] = after
        totals.move(contribution(before, METRICS, WINDOW), contribution(after, METRICS, WINDOW))
    return totals


def truth(
    stream: Sequence[Record],
) -> dict[str, tuple[int, int, int, dict[str, tuple[float, float]]]]:
    """The rules of app/experiments/attribution.py applied to the set of records at once."""
    by_subject: dict[str, list[Exposure | Event]] = defaultdict(list)
    for subject, record in stream:
        by_subject[subject].append(record)
    per_variant: dict[str, tuple[int, int, int, dict[str, tuple[float, float]]]] = {}
    for items in by_subject.values():
        seen = [r for r in items if isinstance(r, Exposure)]
        if not seen:
            continue
        first = min(seen)
        events_by_id: dict[str, Event] = {}
        for event in (r for r in items if isinstance(r, Event)):
            kept = events_by_id.get(event.event_id)
            events_by_id[event.event_id] = event if kept is None else min(kept, event)
        counted = [
            e
            for e in events_by_id.values()
            if first.timestamp <= e.timestamp <= first.timestamp + WINDOW
        ]
        n, exposed, crossed, sums = per_variant.get(first.variant, (0, 0, 0, {}))
        sums = dict(sums)
        for metric, kind in METRICS.items():
            mine = [e.value for e in counted if e.metric == metric]
            x = (1.0 if mine else 0.0) if kind is MetricKind.CONVERSION else sum(mine)
            total, squares = sums.get(metric, (0.0, 0.0))
            sums[metric] = (total + x, squares + x * x)
        crossover = len({e.variant for e in seen}) > 1
        per_variant[first.variant] = (n + 1, exposed + len(seen), crossed + crossover, sums)
    return per_variant


def observed(totals: Totals) -> dict[str, tuple[int, int, int, dict[str, tuple[float, float]]]]:
    return {
        variant: (
            t.subjects,
            t.exposures,
            t.crossovers,
            {m: (t.sums[m], t.squares[m]) for m in METRICS},
        )
        for variant, t in totals.variants.items()
        if t.subjects
    }


def same(
    got: dict[str, tuple[int, int, int, dict[str, tuple[float, float]]]],
    want: dict[str, tuple[int, int, int, dict[str, tuple[float, float]]]],
) -> bool:
    if got.keys() != want.keys():
        return False
    for variant, (n, exposed, crossed, sums) in want.items():
        g_n, g_exposed, g_crossed, g_sums = got[variant]
        if (g_n, g_exposed, g_crossed) != (n, exposed, crossed):
            return False
        for metric, (total, squares) in sums.items():
            g_total, g_squares = g_sums[metric]
            if not (math.isclose(g_total, total, abs_tol=1e-9)):
                return False
            if not math.isclose(g_squares, squares, abs_tol=1e-9):
                return False
    return True


@settings(max_examples=400)
@given(records, st.randoms(use_true_random=False))
def test_the_fold_equals_the_truth_in_any_order(stream: list[Record], rng: random.Random) -> None:
    shuffled = list(stream)
    rng.shuffle(shuffled)
    want = truth(stream)
    assert same(observed(fold(stream)), want)
    assert same(observed(fold(shuffled)), want)


@given(records)
def test_a_redelivered_or_resent_event_changes_nothing(stream: list[Record]) -> None:
    resent = [r for r in stream if isinstance(r[1], Event)]
    assert same(observed(fold([*stream, *resent])), observed(fold(stream)))


def test_an_earlier_exposure_moves_the_subject_and_its_values() -> None:
    late = Exposure(5.0, "x2", "a", 1)
    early = Exposure(1.0, "x1", "control", 1)
    bought = Event(3.0, "e1", "buy", 1.0)
    state = apply_event(apply_exposure(SubjectState(), late), bought)
    assert contribution(state, METRICS, WINDOW) == Contribution(
        "a",
        1,
        False,
        (("buy", 0.0), ("spend", 0.0)),  # bought before its (known) exposure
    )
    state = apply_exposure(state, early)
    assert contribution(state, METRICS, WINDOW) == Contribution(
        "control", 2, True, (("buy", 1.0), ("spend", 0.0))
    )


def test_events_before_exposure_or_past_the_window_do_not_count() -> None:
    state = apply_exposure(SubjectState(), Exposure(10.0, "x", "a", 1))
    for ts, ident in ((9.0, "before"), (10.0, "at"), (20.0, "end"), (20.5, "after")):
        state = apply_event(state, Event(ts, ident, "spend", 1.0))
    assert contribution(state, METRICS, WINDOW) == Contribution(
        "a", 1, False, (("buy", 0.0), ("spend", 2.0))
    )


def test_a_subject_without_exposure_contributes_nothing() -> None:
    state = apply_event(SubjectState(), Event(1.0, "e", "buy", 1.0))
    assert contribution(state, METRICS, WINDOW) is None
