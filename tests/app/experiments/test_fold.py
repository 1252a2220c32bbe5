"""PartitionFold over a real RocksDB: batches, redeliveries and restarts give the truth."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.experiments import attribution
from app.experiments.attribution import Event, Exposure, Totals
from app.experiments.fold import EventRecord, ExposureRecord, PartitionFold, Sourced
from tables.partition_state import PartitionState
from tests.app.experiments.test_attribution import (
    METRICS,
    WINDOW,
    Record,
    events,
    exposures,
    same,
    truth,
)
from tests.app.experiments.test_attribution import observed as observed_totals

EXPERIMENTS = ("checkout", "search")
subjects = st.sampled_from(["ann", "bob/with slash", "cé"])
exposure_records = st.builds(
    ExposureRecord, st.just("dev"), st.sampled_from(EXPERIMENTS), subjects, exposures
)
event_records = st.builds(EventRecord, st.just("dev"), subjects, events)


def resends_share_ids(
    stream: list[ExposureRecord | EventRecord],
) -> list[ExposureRecord | EventRecord]:
    """Exposure ids as producers make them: one per exposure, so two records share an id
    iff one is the other sent again (which counts once)."""
    ids: dict[object, str] = {}
    out: list[ExposureRecord | EventRecord] = []
    for record in stream:
        if isinstance(record, ExposureRecord):
            exposure = replace(record.exposure, exposure_id="")
            ident = ids.setdefault((record.experiment, record.subject, exposure), f"x{len(ids)}")
            record = replace(record, exposure=replace(exposure, exposure_id=ident))
        out.append(record)
    return out


streams = st.lists(st.one_of(exposure_records, event_records), max_size=40).map(resends_share_ids)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PartitionState]:
    state = PartitionState(tmp_path / "experiments")
    state.open()
    yield state
    state.close()


def sourced(stream: list[ExposureRecord | EventRecord]) -> list[Sourced]:
    """Each record at its offset in its own topic, as a consumer reads them."""
    next_offset = {"exposures": 0, "metric-events": 0}
    out = []
    for record in stream:
        source = "exposures" if isinstance(record, ExposureRecord) else "metric-events"
        out.append(Sourced(source, next_offset[source], record))
        next_offset[source] += 1
    return out


def served(
    stream: list[ExposureRecord | EventRecord], experiment: str
) -> set[tuple[str, Exposure]]:
    """The experiment's exposures, each once however often it was sent."""
    return {
        (r.subject, r.exposure)
        for r in stream
        if isinstance(r, ExposureRecord) and r.experiment == experiment
    }


def expected(stream: list[ExposureRecord | EventRecord], experiment: str) -> object:
    """The truth of one experiment: its exposures and every event of the environment."""
    pairs: list[Record] = []
    for record in stream:
        if isinstance(record, ExposureRecord) and record.experiment == experiment:
            if (record.subject, record.exposure) not in pairs:  # sent again: counted once
                pairs.append((record.subject, record.exposure))
        elif isinstance(record, EventRecord):
            pairs.append((record.subject, record.event))
    return truth(pairs)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(streams, st.integers(1, 7), st.data())
def test_batches_redeliveries_and_restarts_give_the_truth(
    tmp_path_factory: pytest.TempPathFactory,
    stream: list[ExposureRecord | EventRecord],
    batch_size: int,
    data: st.DataObject,
) -> None:
    path = tmp_path_factory.mktemp("fold") / "experiments"
    store = PartitionState(path)
    store.open()
    fold = PartitionFold(store, lambda env, experiment: METRICS, WINDOW)
    items = sourced(stream)
    start = 0
    while start < len(items):
        batch = items[start : start + batch_size]
        fold.apply(0, batch)
        if data.draw(st.booleans(), label="redeliver"):
            fold.apply(0, items[max(0, start - batch_size) : start + batch_size])
        if data.draw(st.booleans(), label="restart"):
            store.close()
            store.open()
        start += batch_size
    for experiment in EXPERIMENTS:
        got = observed_totals(fold.totals(0, "dev", experiment))
        assert same(got, expected(stream, experiment)), experiment  # type: ignore[arg-type]
    store.close()


def test_an_event_counts_in_each_experiment_the_subject_saw(store: PartitionState) -> None:
    fold = PartitionFold(store, lambda env, experiment: METRICS, WINDOW)
    fold.apply(
        3,
        sourced(
            [
                ExposureRecord("dev", "checkout", "ann", Exposure(1.0, "x1", "a", 1)),
                EventRecord("dev", "ann", Event(2.0, "e1", "spend", 4.0)),
                ExposureRecord("dev", "search", "ann", Exposure(3.0, "x2", "control", 1)),
                EventRecord("dev", "ann", Event(5.0, "e2", "spend", 1.5)),
            ]
        ),
    )
    checkout = fold.totals(3, "dev", "checkout").variants["a"]
    search = fold.totals(3, "dev", "search").variants["control"]
    assert (checkout.subjects, checkout.sums["spend"], checkout.squares["spend"]) == (1, 5.5, 30.25)
    assert (search.subjects, search.sums["spend"]) == (1, 1.5)  # the first event came before
    assert fold.totals(2, "dev", "checkout").variants == {}  # another partition


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(streams, st.integers(1, 7))
def test_exposures_per_window_count_every_exposure_once_where_it_was_served(
    tmp_path_factory: pytest.TempPathFactory,
    stream: list[ExposureRecord | EventRecord],
    batch_size: int,
) -> None:
    store = PartitionState(tmp_path_factory.mktemp("series") / "experiments")
    store.open()
    fold = PartitionFold(store, lambda env, experiment: METRICS, WINDOW, series_window_s=5)
    items = sourced(stream)
    for start in range(0, len(items), batch_size):
        fold.apply(0, items[start : start + batch_size])
        fold.apply(0, items[: start + batch_size])  # everything so far, redelivered
    for experiment in EXPERIMENTS:
        want: Counter[tuple[str, int]] = Counter(
            (exposure.variant, int(exposure.timestamp // 5) * 5)
            for _, exposure in served(stream, experiment)
        )
        totals = fold.totals(0, "dev", experiment)
        got = Counter(
            {(v, start): n for v, t in totals.variants.items() for start, n in t.windows.items()}
        )
        assert got == want, experiment
    store.close()


def test_only_the_newest_windows_are_kept_whatever_the_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(attribution, "MAX_WINDOWS", 3)
    late_first = [Exposure(float(t), f"x{t}", "a", 1) for t in (3000, 0, 1, 2)]
    totals = Totals()
    for exposure in late_first:
        totals.count_exposure(exposure, 1)
    in_order = Totals()
    for exposure in sorted(late_first):
        in_order.count_exposure(exposure, 1)
    assert totals.variants["a"].windows == in_order.variants["a"].windows == {1: 1, 2: 1, 3000: 1}


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(streams, st.integers(1, 7), st.data())
def test_a_restore_from_any_prefix_of_the_changelog_then_refolding_gives_the_truth(
    tmp_path_factory: pytest.TempPathFactory,
    stream: list[ExposureRecord | EventRecord],
    batch_size: int,
    data: st.DataObject,
) -> None:
    """A worker dies having logged part of a batch (its local state lost, or stale: from an
    earlier ownership of the partition); the next owner restores what was logged, rebuilds,
    and folds on from the restored offsets: every total equals the truth."""
    path = tmp_path_factory.mktemp("owner")
    first = PartitionState(path / "first")
    first.open()
    fold = PartitionFold(first, lambda env, experiment: METRICS, WINDOW)
    items = sourced(stream)
    changelog: list[tuple[bytes, bytes]] = []
    cut = data.draw(st.integers(0, len(items)), label="dies in the batch at")
    stale_at = data.draw(st.integers(0, len(changelog) + len(items) * 4), label="stale copy")
    start = 0
    while start < len(items):
        folded = fold.fold(0, items[start : start + batch_size])
        records = folded.changelog()
        if start <= cut < start + batch_size:  # dies while producing this batch
            changelog += records[: data.draw(st.integers(0, len(records)), label="logged")]
            break
        changelog += records
        fold.commit(folded)
        start += batch_size
    first.close()

    second = PartitionState(path / "second")
    second.open()
    restored = PartitionFold(second, lambda env, experiment: METRICS, WINDOW)
    restored.restore(0, changelog[:stale_at])  # an old local copy ...
    restored.rebuild(0)
    restored.restore(0, changelog)  # ... caught up from the changelog
    restored.rebuild(0)
    offsets = restored.offsets(0, ("exposures", "metric-events"))
    rest = [item for item in items if item.offset >= offsets[item.source]]
    for begin in range(0, len(rest), batch_size):
        restored.apply(0, rest[begin : begin + batch_size])
    for experiment in EXPERIMENTS:
        got = observed_totals(restored.totals(0, "dev", experiment))
        assert same(got, expected(stream, experiment)), experiment  # type: ignore[arg-type]
        series = Counter(
            (exposure.variant, int(exposure.timestamp // 60) * 60)
            for _, exposure in served(stream, experiment)
        )
        windows = restored.totals(0, "dev", experiment).variants
        assert Counter({(v, s): n for v, t in windows.items() for s, n in t.windows.items()}) == (
            series
        )
    second.close()


def test_totals_follow_a_changed_metric_declaration(store: PartitionState) -> None:
    """A metric declared after subjects were folded counts their kept events too."""
    declared: dict[str, dict[str, attribution.MetricKind]] = {"now": {}}
    fold = PartitionFold(store, lambda env, experiment: declared["now"], WINDOW)
    fold.apply(
        0,
        sourced(
            [
                ExposureRecord("dev", "checkout", "ann", Exposure(1.0, "x1", "a", 1)),
                EventRecord("dev", "ann", Event(2.0, "e1", "spend", 4.0)),
            ]
        ),
    )
    assert fold.totals(0, "dev", "checkout").variants["a"].sums == {}
    declared["now"] = dict(METRICS)
    assert fold.refresh(0) == {("dev", "checkout")}  # no new record needed
    assert fold.totals(0, "dev", "checkout").variants["a"].sums["spend"] == 4.0
    assert fold.declared(0, "dev", "checkout") == {"buy": "conversion", "spend": "mean"}
    assert fold.refresh(0) == set()  # current now
    fold.apply(
        0,
        [
            Sourced(
                "exposures", 1, ExposureRecord("dev", "checkout", "bob", Exposure(3, "x2", "a", 1))
            )
        ],
    )
    totals = fold.totals(0, "dev", "checkout").variants["a"]
    assert (totals.subjects, totals.sums["spend"]) == (2, 4.0)


def test_the_series_keeps_the_windows_its_retention_allows(store: PartitionState) -> None:
    fold = PartitionFold(store, lambda env, experiment: METRICS, WINDOW, 60, series_windows=2)
    fold.apply(
        0,
        sourced(
            [
                ExposureRecord("dev", "checkout", s, Exposure(t, f"x{t}", "a", 1))
                for s, t in (("ann", 0.0), ("bob", 70.0), ("cy", 130.0))
            ]
        ),
    )
    assert fold.totals(0, "dev", "checkout").variants["a"].windows == {60: 1, 120: 1}
