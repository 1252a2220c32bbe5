"""Experiment statistics: every gbstats vector within 1e-9, and the invariants of the tests.

`gbstats_vectors.json` is gbstats 0.8.0's own answer for each case, written by
scripts/gbstats_vectors.py from a separate venv (gbstats pins old pandas/numpy). Estimates,
standard deviations, intervals and degrees of freedom must agree to a relative 1e-9; p-values,
being probabilities, to an absolute 1e-9 (we use the t survival function where gbstats computes
1 - cdf, which differs by rounding below 1e-15).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.experiments.stats import (
    DEFAULT_SEQUENTIAL_TUNING,
    ArmStatistics,
    Comparison,
    Interval,
    Lift,
    MetricKind,
    Unavailable,
    check_sample_ratio,
    compare,
    compare_to_control,
    summarize,
)

VECTORS = json.loads((Path(__file__).parent / "gbstats_vectors.json").read_text())
RELATIVE = 1e-9
ABSOLUTE_P = 1e-9


def close(ours: float, theirs: float) -> bool:
    """Equal to a relative 1e-9 (exactly, when gbstats says 0)."""
    return math.isclose(ours, theirs, rel_tol=RELATIVE, abs_tol=1e-300)


def assert_lift(ours: Lift, theirs: dict[str, Any], where: str) -> None:
    assert close(ours.estimate, theirs["estimate"]), (where, "estimate", ours, theirs)
    assert close(ours.estimate, theirs["sequential_estimate"]), (where, "sequential estimate")
    assert close(ours.stddev, theirs["stddev"]), (where, "stddev", ours, theirs)
    assert close(ours.ci.low, theirs["ci"][0]), (where, "ci low", ours, theirs)
    assert close(ours.ci.high, theirs["ci"][1]), (where, "ci high", ours, theirs)
    assert close(ours.sequential_ci.low, theirs["sequential_ci"][0]), (where, "seq low", ours)
    assert close(ours.sequential_ci.high, theirs["sequential_ci"][1]), (where, "seq high", ours)
    assert abs(ours.p_value - theirs["p_value"]) <= ABSOLUTE_P, (where, "p", ours, theirs)
    assert abs(ours.sequential_p_value - theirs["sequential_p_value"]) <= ABSOLUTE_P, (
        where,
        "sequential p",
        ours,
        theirs,
    )


def assert_comparison(ours: Comparison, theirs: dict[str, Any], where: str) -> None:
    assert close(ours.control.mean, theirs["control_mean"]), (where, "control mean")
    assert close(ours.control.variance, theirs["control_variance"]), (where, "control var")
    assert close(ours.treatment.mean, theirs["treatment_mean"]), (where, "treatment mean")
    assert close(ours.treatment.variance, theirs["treatment_variance"]), (where, "treat var")
    assert (ours.unavailable and ours.unavailable.value) == theirs["error"], where
    if theirs["dof"] is None:
        assert ours.dof is None, where
    else:
        assert ours.dof is not None and close(ours.dof, theirs["dof"]), (where, "dof")
    assert_lift(ours.absolute, theirs["absolute"], f"{where} absolute")
    assert_lift(ours.relative, theirs["relative"], f"{where} relative")


def arm(values: list[float]) -> ArmStatistics:
    n, total, total_squares = values
    return ArmStatistics(int(n), total, total_squares)


@pytest.mark.parametrize(
    "case", VECTORS["comparisons"], ids=[c["description"] for c in VECTORS["comparisons"]]
)
def test_comparisons_equal_gbstats(case: dict[str, Any]) -> None:
    arms = [arm(values) for values in case["arms"]]
    comparisons = compare_to_control(
        arms,
        MetricKind(case["kind"]),
        alpha=case["alpha"],
        sequential_tuning=case["sequential_tuning"],
    )
    assert len(comparisons) == len(case["expected"])
    for index, (ours, theirs) in enumerate(zip(comparisons, case["expected"], strict=True)):
        assert_comparison(ours, theirs, f"{case['description']} v{index + 1}")


@pytest.mark.parametrize(
    "case", VECTORS["sample_ratio"], ids=[c["description"] for c in VECTORS["sample_ratio"]]
)
def test_sample_ratio_equals_gbstats_check_srm(case: dict[str, Any]) -> None:
    result = check_sample_ratio(case["subjects"], case["weights"])
    assert abs(result.p_value - case["p_value"]) <= ABSOLUTE_P
    assert result.mismatch == (case["p_value"] < 0.001)


def test_vectors_cover_what_the_brief_asks() -> None:
    """The oracle file keeps its breadth: a regenerated file that lost a kind of case fails."""
    expected = [e for c in VECTORS["comparisons"] for e in c["expected"]]
    assert VECTORS["oracle"]["gbstats"] == "0.8.0"
    assert len(expected) >= 300
    gbstats_errors = {Unavailable.ZERO_BASELINE.value, Unavailable.ZERO_VARIANCE.value}
    assert {e["error"] for e in expected} == {None, *gbstats_errors}
    assert {len(c["arms"]) for c in VECTORS["comparisons"]} == {2, 3, 4}
    assert len({c["sequential_tuning"] for c in VECTORS["comparisons"]}) >= 5
    assert any(e["absolute"]["estimate"] < 0 for e in expected)
    assert any(e["control_mean"] < 0 for e in expected)
    assert {c["p_value"] < 0.001 for c in VECTORS["sample_ratio"]} == {True, False}


# --- gbstats' edge cases, by name -----------------------------------------------------------


def test_control_mean_zero_is_unavailable_for_both_lifts_as_gbstats() -> None:
    result = compare(ArmStatistics(100, 0, 0), ArmStatistics(100, 5, 5), MetricKind.CONVERSION)
    assert result.unavailable is Unavailable.ZERO_BASELINE
    assert (
        result.absolute
        == result.relative
        == Lift(0.0, 0.0, Interval(0.0, 0.0), 1.0, Interval(0.0, 0.0), 1.0)
    )
    assert result.treatment.mean == 0.05 and result.dof is None


@pytest.mark.parametrize(
    ("control", "treatment"),
    [
        (ArmStatistics(10, 30, 90), ArmStatistics(10, 40, 200)),  # constant control
        (ArmStatistics(10, 30, 100), ArmStatistics(1, 3, 9)),  # n = 1
        (ArmStatistics(10, 30, 100), ArmStatistics(0, 0, 0)),  # n = 0
    ],
)
def test_zero_variance_or_too_few_subjects_is_unavailable(
    control: ArmStatistics, treatment: ArmStatistics
) -> None:
    result = compare(control, treatment, MetricKind.MEAN)
    assert result.unavailable is Unavailable.ZERO_VARIANCE
    assert result.absolute.p_value == 1.0 and result.absolute.ci == Interval(0.0, 0.0)


def test_overwhelming_evidence_gives_sequential_p_zero_without_overflow() -> None:
    result = compare(
        ArmStatistics(100_000, 1_000, 1_000),
        ArmStatistics(100_000, 5_000, 5_000),
        MetricKind.CONVERSION,
    )
    assert result.absolute.sequential_p_value == 0.0  # gbstats: 1 / np.exp(inf) = 0
    assert 0.0 < result.relative.p_value < 1e-100  # gbstats' 1 - cdf rounds this to 0


@pytest.mark.parametrize(
    "control",
    [
        ArmStatistics(10, 1e-81, 9.0),  # control mean 1e-82: its 4th power underflows to 0
        ArmStatistics(3, 3.0, 1e300),  # variance 5e299: its square (Welch dof) overflows
    ],
)
def test_figures_beyond_a_float_are_out_of_range_not_an_exception(control: ArmStatistics) -> None:
    """gbstats raises ZeroDivisionError / OverflowError here; we answer with the default."""
    result = compare(control, ArmStatistics(10, 5.0, 12.0), MetricKind.MEAN)
    assert result.unavailable is Unavailable.OUT_OF_RANGE
    assert result.absolute.p_value == result.relative.p_value == 1.0 and result.dof is None


@pytest.mark.parametrize(
    "build",
    [
        lambda: ArmStatistics(-1, 0, 0),
        lambda: ArmStatistics(3, math.nan, 1),
        lambda: ArmStatistics(3, 1, math.inf),
        lambda: ArmStatistics(3, 1, -1),
        lambda: ArmStatistics(3, 1e151, 1e300),
        lambda: summarize(ArmStatistics(3, 4, 4), MetricKind.CONVERSION),
        lambda: summarize(ArmStatistics(3, -1, 1), MetricKind.CONVERSION),
        lambda: compare(ArmStatistics(3, 1, 1), ArmStatistics(3, 2, 2), MetricKind.MEAN, alpha=0),
        lambda: compare(ArmStatistics(3, 1, 1), ArmStatistics(3, 2, 2), MetricKind.MEAN, alpha=1),
        lambda: compare(
            ArmStatistics(3, 1, 1), ArmStatistics(3, 2, 2), MetricKind.MEAN, sequential_tuning=0
        ),
        lambda: compare_to_control([ArmStatistics(3, 1, 1)], MetricKind.MEAN, control=1),
        lambda: check_sample_ratio([1, 2], [1.0]),
        lambda: check_sample_ratio([5], [1.0]),
        lambda: check_sample_ratio([-1, 2], [1.0, 1.0]),
        lambda: check_sample_ratio([1, 2], [0.0, 0.0]),
        lambda: check_sample_ratio([1, 2], [math.nan, 1.0]),
    ],
)
def test_invalid_arguments_raise_value_error(build: Any) -> None:
    with pytest.raises(ValueError, match=r"."):
        build()


def test_no_subjects_is_no_mismatch_as_gbstats() -> None:
    result = check_sample_ratio([0, 0, 0], [1.0, 1.0, 1.0])
    assert result.p_value == 1.0 and not result.mismatch


# --- invariants -----------------------------------------------------------------------------

KINDS = st.sampled_from(list(MetricKind))


@st.composite
def arms(draw: st.DrawFn, kind: MetricKind, min_n: int = 2) -> ArmStatistics:
    """An arm of `kind` with n >= min_n, a rate anywhere in [0, 1] or a mean of either sign."""
    n = draw(st.integers(min_n, 2_000_000))
    if kind is MetricKind.CONVERSION:
        converted = draw(st.integers(0, n))
        return ArmStatistics(n, converted, converted)
    mean = draw(st.floats(-1e3, 1e3))
    sd = draw(st.floats(1e-3, 1e3))
    total = n * mean
    return ArmStatistics(n, total, (n - 1) * sd * sd + total * total / n)


@st.composite
def leveled_comparisons(draw: st.DrawFn, min_n: int = 2) -> tuple[Comparison, float]:
    """A comparison of two drawn arms and the alpha it was computed at."""
    kind = draw(KINDS)
    alpha = draw(st.sampled_from([0.01, 0.05, 0.1, 0.2]))
    result = compare(
        draw(arms(kind, min_n)),
        draw(arms(kind, min_n)),
        kind,
        alpha=alpha,
        sequential_tuning=draw(st.sampled_from([100.0, DEFAULT_SEQUENTIAL_TUNING, 1e5, 1e7])),
    )
    return result, alpha


def comparisons(min_n: int = 2) -> st.SearchStrategy[Comparison]:
    return leveled_comparisons(min_n).map(lambda drawn: drawn[0])


@given(KINDS.flatmap(lambda kind: st.tuples(st.just(kind), arms(kind), arms(kind))))
def test_swapping_arms_flips_the_absolute_lift(drawn: tuple[MetricKind, Any, Any]) -> None:
    kind, a, b = drawn
    forward, backward = compare(a, b, kind), compare(b, a, kind)
    if forward.unavailable or backward.unavailable:
        return
    assert backward.absolute.estimate == -forward.absolute.estimate
    assert backward.absolute.stddev == forward.absolute.stddev
    assert backward.absolute.p_value == forward.absolute.p_value
    assert backward.absolute.ci.low == -forward.absolute.ci.high
    assert backward.absolute.sequential_ci.high == -forward.absolute.sequential_ci.low
    assert backward.dof == forward.dof


@given(comparisons())
def test_p_values_are_probabilities_and_intervals_hold_the_estimate(result: Comparison) -> None:
    for lift in (result.absolute, result.relative):
        assert 0.0 <= lift.p_value <= 1.0
        assert 0.0 <= lift.sequential_p_value <= 1.0
        assert lift.ci.low <= lift.estimate <= lift.ci.high
        assert lift.sequential_ci.low <= lift.estimate <= lift.sequential_ci.high


@given(comparisons())
def test_the_relative_lift_is_the_absolute_one_over_the_control_mean(result: Comparison) -> None:
    if result.unavailable:
        assert result.absolute == result.relative
        return
    expected = result.absolute.estimate / result.control.mean
    assert math.isclose(result.relative.estimate, expected, rel_tol=1e-9, abs_tol=1e-12)


@given(comparisons(min_n=30))
def test_the_sequential_interval_contains_the_fixed_horizon_one(result: Comparison) -> None:
    """Always valid costs width. With n >= 30 per arm the Welch dof is >= 29, so the t quantile
    is below the normal-mixture minimum (about 3.03 sd at alpha 0.05); with very few subjects
    gbstats' sequential interval (normal-based) can be the narrower one."""
    for lift in (result.absolute, result.relative):
        assert lift.sequential_ci.contains(lift.ci)


@given(leveled_comparisons())
def test_an_interval_excludes_zero_exactly_when_its_p_value_is_below_alpha(
    drawn: tuple[Comparison, float],
) -> None:
    """Each test is dual to its interval: a wrong variance, quantile or rho breaks this."""
    result, alpha = drawn
    if result.unavailable:
        return
    for lift in (result.absolute, result.relative):
        for p_value, interval in (
            (lift.p_value, lift.ci),
            (lift.sequential_p_value, lift.sequential_ci),
        ):
            if abs(p_value - alpha) > 1e-6 * alpha:  # not on the boundary
                assert (interval.low > 0 or interval.high < 0) == (p_value < alpha)


@given(
    st.integers(2, 4).flatmap(
        lambda count: st.tuples(
            st.lists(arms(MetricKind.MEAN), min_size=count, max_size=count),
            st.integers(0, count - 1),
        )
    )
)
def test_each_arm_is_compared_with_the_named_control(
    drawn: tuple[list[ArmStatistics], int],
) -> None:
    group, control = drawn
    results = compare_to_control(group, MetricKind.MEAN, control=control)
    others = [arm for index, arm in enumerate(group) if index != control]
    assert results == tuple(compare(group[control], arm, MetricKind.MEAN) for arm in others)


@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.floats(0.01, 100)), min_size=2, max_size=4),
    st.randoms(use_true_random=False),
)
def test_sample_ratio_is_a_probability_unchanged_by_variant_order(
    split: list[tuple[int, float]], order: Any
) -> None:
    subjects, weights = [count for count, _ in split], [weight for _, weight in split]
    result = check_sample_ratio(subjects, weights)
    assert 0.0 <= result.p_value <= 1.0
    shuffled = list(split)
    order.shuffle(shuffled)
    again = check_sample_ratio([c for c, _ in shuffled], [w for _, w in shuffled])
    assert math.isclose(again.p_value, result.p_value, rel_tol=1e-9, abs_tol=1e-12)


@given(st.lists(st.integers(1, 1000), min_size=2, max_size=4), st.integers(1, 1000))
def test_subjects_exactly_in_proportion_to_the_weights_give_p_one(
    weights: list[int], scale: int
) -> None:
    result = check_sample_ratio([w * scale for w in weights], [float(w) for w in weights])
    assert math.isclose(result.p_value, 1.0, rel_tol=1e-9) and not result.mismatch
