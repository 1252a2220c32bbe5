"""Results from per-partition totals: merging partials, then the statistics per metric."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.experiments.attribution import Contribution, Exposure, Totals
from app.experiments.results import merge, results
from app.experiments.stats import (
    ArmStatistics,
    MetricKind,
    check_sample_ratio,
    compare_to_control,
)
from tests.app.experiments.test_attribution import METRICS, Record, fold, observed, records

VARIANTS = ("control", "a", "b")


@given(records, st.integers(1, 4))
def test_merged_partitions_equal_one_fold_of_everything(stream: list[Record], parts: int) -> None:
    """Every subject lives in one partition (keyed by targeting key): sums of partials are
    the statistics of the union."""
    partitions = [
        [record for record in stream if hash(record[0]) % parts == p] for p in range(parts)
    ]
    merged = merge(fold(partition) for partition in partitions)
    whole = observed(fold(stream))
    got = observed(merged)
    assert got.keys() == whole.keys()
    for variant, (n, exposed, crossed, sums) in whole.items():
        assert got[variant][:3] == (n, exposed, crossed)
        for metric, (total, squares) in sums.items():
            assert math.isclose(got[variant][3][metric][0], total, abs_tol=1e-9)
            assert math.isclose(got[variant][3][metric][1], squares, abs_tol=1e-9)


def subjects(totals: Totals, variant: str, values: list[tuple[float, float]]) -> None:
    for buy, spend in values:
        totals.move(None, Contribution(variant, 2, False, (("buy", buy), ("spend", spend))))


def test_every_figure_is_the_statistics_of_the_arms_in_variant_order() -> None:
    totals = Totals()
    subjects(totals, "control", [(1.0, 3.0), (0.0, 1.0), (0.0, 2.0), (1.0, 5.0)])
    subjects(totals, "b", [(1.0, 4.0), (1.0, 6.0), (0.0, 2.5)])
    # "a" was in the split but nobody saw it: n = 0, not a missing row.
    got = results(totals, VARIANTS, "control", METRICS, weights=[1 / 3, 1 / 3, 1 / 3])
    assert [(v.variant, v.subjects, v.exposures) for v in got.variants] == [
        ("control", 4, 8),
        ("a", 0, 0),
        ("b", 3, 6),
    ]
    arms = {
        "buy": (ArmStatistics(4, 2.0, 2.0), ArmStatistics(0, 0.0, 0.0), ArmStatistics(3, 2.0, 2.0)),
        "spend": (
            ArmStatistics(4, 11.0, 39.0),
            ArmStatistics(0, 0.0, 0.0),
            ArmStatistics(3, 12.5, 58.25),
        ),
    }
    assert [m.metric for m in got.metrics] == ["buy", "spend"]
    for metric in got.metrics:
        assert metric.arms == arms[metric.metric]
        assert metric.comparisons == compare_to_control(
            arms[metric.metric], METRICS[metric.metric], control=0
        )
    assert got.sample_ratio == check_sample_ratio([4, 0, 3], [1 / 3, 1 / 3, 1 / 3])


def test_the_control_may_be_any_variant() -> None:
    totals = Totals()
    subjects(totals, "control", [(1.0, 1.0), (0.0, 2.0)])
    subjects(totals, "b", [(1.0, 4.0), (0.0, 6.0), (1.0, 1.0)])
    got = results(totals, VARIANTS, "b", {"spend": MetricKind.MEAN})
    arms = got.metrics[0].arms
    assert got.metrics[0].comparisons == compare_to_control(arms, MetricKind.MEAN, control=2)
    assert got.sample_ratio is None


def test_a_control_that_is_no_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="not a variant"):
        results(Totals(), VARIANTS, "treatment", METRICS)


def test_the_series_has_every_window_with_each_variant_in_order() -> None:
    east, west = Totals(), Totals()  # two partitions
    east.count_exposure(Exposure(61.0, "x1", "control", 1), 60)
    east.count_exposure(Exposure(130.0, "x2", "b", 1), 60)
    west.count_exposure(Exposure(119.0, "x3", "control", 1), 60)
    got = results(merge([east, west]), VARIANTS, "control", {})
    assert got.series == ((60, (2, 0, 0)), (120, (0, 0, 1)))
