"""Experiment statistics equal to GrowthBook's stats engine, from sufficient statistics.

Each figure equals what `gbstats` 0.8.0 (the release on PyPI; its source is
`gbstats/frequentist/tests.py`, `gbstats/models/statistics.py` and `gbstats/utils.py`) computes
from the same numbers; `tests/app/experiments/gbstats_vectors.json` holds its answers and the
tests hold us to them within 1e-9. The inputs are what the stream can aggregate exactly per
(experiment, variant, metric): subjects n, Σx and Σx² over per-subject values.

    ArmStatistics (n, Σx, Σx²) --summarize(kind)--> ArmSummary (mean, variance)
    control + treatment --compare--> Comparison (absolute and relative Lift, each with the
                                     fixed-horizon and the always-valid sequential interval)
    subjects per variant + weights --check_sample_ratio--> SampleRatio (chi-square p, mismatch)

Pure: no I/O, no clock. Invalid arguments (negative n, non-finite sums, a conversion count above
n, alpha outside (0, 1)) are bugs of the caller and raise ValueError; a comparison gbstats cannot
make (control mean 0, zero variance, a figure beyond a float) is a value: `Comparison.unavailable`
says why and the lifts are gbstats' uninformative default (estimate 0, interval [0, 0], p 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import ModuleType

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_SEQUENTIAL_TUNING",
    "SRM_THRESHOLD",
    "ArmStatistics",
    "ArmSummary",
    "Comparison",
    "Interval",
    "Lift",
    "MetricKind",
    "SampleRatio",
    "Unavailable",
    "check_sample_ratio",
    "compare",
    "compare_to_control",
    "summarize",
]

DEFAULT_ALPHA = 0.05
"""Two-sided level: 95 % intervals (gbstats `FrequentistConfig.alpha`)."""

DEFAULT_SEQUENTIAL_TUNING = 5000.0
"""gbstats `SequentialConfig.sequential_tuning_parameter`: the total sample size (both arms) at
which the always-valid interval is tightest relative to the fixed-horizon one."""

SRM_THRESHOLD = 0.001
"""GrowthBook's default sample-ratio-mismatch threshold: flag when the chi-square p is below."""


_LARGEST_SUM = 1e150
"""Σx beyond which Σx² / n (gbstats' variance formula) would overflow a float."""


class MetricKind(StrEnum):
    """How a metric's per-subject values are modelled, as gbstats' statistic classes."""

    CONVERSION = "conversion"
    """0/1 per subject: gbstats `ProportionStatistic` ("binomial"), variance p(1-p)."""
    MEAN = "mean"
    """Any value per subject: gbstats `SampleMeanStatistic` ("count"), sample variance (n-1)."""


class Unavailable(StrEnum):
    """Why gbstats returns its uninformative default for a comparison (its error messages)."""

    ZERO_BASELINE = "ZERO_NEGATIVE_BASELINE_VARIATION"
    """The control mean is exactly 0: no relative lift, and gbstats gives no absolute one."""
    ZERO_VARIANCE = "ZERO_NEGATIVE_VARIANCE"
    """An arm's variance is <= 0 (n < 2, a constant metric, a rate of 0 or 1)."""
    OUT_OF_RANGE = "OUT_OF_RANGE"
    """Ours, not gbstats' (it raises there): a figure overflows or underflows a float."""


@dataclass(frozen=True, slots=True)
class ArmStatistics:
    """Sufficient statistics of one metric in one variant: subjects, Σx and Σx² over subjects.

    For a conversion only n and Σx (the converted subjects) are read, as gbstats'
    `ProportionStatistic` does; Σx² of 0/1 values equals Σx anyway.
    """

    n: int
    total: float
    total_squares: float

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"subjects n must be >= 0, got {self.n}")
        if not (math.isfinite(self.total) and math.isfinite(self.total_squares)):
            raise ValueError("sums must be finite")
        if self.total_squares < 0:
            raise ValueError(f"the sum of squares must be >= 0, got {self.total_squares}")
        if abs(self.total) > _LARGEST_SUM:
            raise ValueError(f"|sum| must be <= {_LARGEST_SUM:g} so that its square is finite")


@dataclass(frozen=True, slots=True)
class ArmSummary:
    """Mean (or rate) and variance of one arm, as gbstats' `Statistic.mean` and `.variance`."""

    n: int
    mean: float
    variance: float

    @property
    def stddev(self) -> float:
        """gbstats `Statistic.stddev`: 0 when the variance is not positive."""
        return math.sqrt(self.variance) if self.variance > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Interval:
    """A confidence interval [low, high]."""

    low: float
    high: float

    def contains(self, other: Interval) -> bool:
        """True when `other` lies inside this interval (bounds included)."""
        return self.low <= other.low and other.high <= self.high


@dataclass(frozen=True, slots=True)
class Lift:
    """One effect (absolute or relative) of a treatment over the control.

    estimate, stddev, ci and p_value equal gbstats `TwoSidedTTest(...).compute_result()`
    (`expected`, `uplift.stddev`, `ci`, `p_value`); sequential_ci and sequential_p_value equal
    `SequentialTwoSidedTTest(...).compute_result()` (`ci`, `p_value`), whose estimate and stddev
    are the same.
    """

    estimate: float
    stddev: float
    ci: Interval
    p_value: float
    sequential_ci: Interval
    sequential_p_value: float


_NO_LIFT = Lift(0.0, 0.0, Interval(0.0, 0.0), 1.0, Interval(0.0, 0.0), 1.0)
"""gbstats `TTest._default_output`: what every lift is when the comparison is unavailable."""


@dataclass(frozen=True, slots=True)
class Comparison:
    """A treatment against the control on one metric.

    `absolute` is gbstats with difference_type "absolute" (treatment mean - control mean),
    `relative` with "relative" ((treatment - control) / control, variance by the delta method).
    `dof` is the Welch-Satterthwaite degrees of freedom both use (`TTest.dof`); None, like both
    lifts being the default, when `unavailable` says why gbstats makes no comparison.
    """

    control: ArmSummary
    treatment: ArmSummary
    absolute: Lift
    relative: Lift
    dof: float | None
    unavailable: Unavailable | None


@dataclass(frozen=True, slots=True)
class SampleRatio:
    """Sample-ratio check: gbstats `check_srm` p-value and whether it is below the threshold."""

    p_value: float
    mismatch: bool


def summarize(arm: ArmStatistics, kind: MetricKind) -> ArmSummary:
    """Mean and variance of an arm as gbstats' `ProportionStatistic` / `SampleMeanStatistic`.

    n = 0 gives mean 0 (gbstats' answer); a mean metric with n <= 1 has variance 0, so any
    comparison with it is `Unavailable.ZERO_VARIANCE`.
    """
    mean = arm.total / arm.n if arm.n else 0.0
    if kind is MetricKind.CONVERSION:
        if not 0 <= arm.total <= arm.n:
            raise ValueError(f"conversions must be in [0, n={arm.n}], got {arm.total}")
        return ArmSummary(arm.n, mean, mean * (1 - mean))
    if arm.n <= 1:
        return ArmSummary(arm.n, mean, 0.0)
    variance = (arm.total_squares - pow(arm.total, 2) / arm.n) / (arm.n - 1)
    return ArmSummary(arm.n, mean, variance)


def compare(
    control: ArmStatistics,
    treatment: ArmStatistics,
    kind: MetricKind,
    *,
    alpha: float = DEFAULT_ALPHA,
    sequential_tuning: float = DEFAULT_SEQUENTIAL_TUNING,
) -> Comparison:
    """Compare a treatment with the control as gbstats' frequentist engine does.

    Equals `TwoSidedTTest` and `SequentialTwoSidedTTest` (alpha, sequential_tuning_parameter)
    with difference_type "absolute" and "relative", including `compute_result`'s guards in its
    order: a control mean of exactly 0 first, then a variance <= 0 in either arm. Where gbstats
    itself would raise (a float overflow or underflow in its formulas, e.g. a control mean
    below ~1e-77 whose 4th power is 0) the comparison is `Unavailable.OUT_OF_RANGE`.
    """
    _check_parameters(alpha, sequential_tuning)
    a, b = summarize(control, kind), summarize(treatment, kind)
    unavailable = _unavailable(a, b)
    if unavailable is None:
        result = _finite_comparison(a, b, alpha, sequential_tuning)
        if result is not None:
            return result
        unavailable = Unavailable.OUT_OF_RANGE
    return Comparison(a, b, _NO_LIFT, _NO_LIFT, None, unavailable)


def compare_to_control(
    arms: Sequence[ArmStatistics],
    kind: MetricKind,
    *,
    control: int = 0,
    alpha: float = DEFAULT_ALPHA,
    sequential_tuning: float = DEFAULT_SEQUENTIAL_TUNING,
) -> tuple[Comparison, ...]:
    """Each other arm against `arms[control]`, in arm order (gbstats' baseline vs v1, v2, ...)."""
    if not 0 <= control < len(arms):
        raise ValueError(f"control index {control} is not one of {len(arms)} arms")
    return tuple(
        compare(arms[control], arm, kind, alpha=alpha, sequential_tuning=sequential_tuning)
        for index, arm in enumerate(arms)
        if index != control
    )


def check_sample_ratio(
    subjects: Sequence[int], weights: Sequence[float], *, threshold: float = SRM_THRESHOLD
) -> SampleRatio:
    """Chi-square of subjects per variant against the split weights: gbstats `check_srm`.

    As gbstats: no subjects at all gives p = 1; a variant of weight <= 0 adds no term to the
    statistic but still counts in the degrees of freedom (variants - 1).
    """
    if len(subjects) != len(weights) or len(subjects) < 2:
        raise ValueError("need one weight per variant and at least two variants")
    if any(count < 0 for count in subjects) or not all(math.isfinite(w) for w in weights):
        raise ValueError("subject counts must be >= 0 and weights finite")
    observed = sum(subjects)
    total_weight = sum(weights)
    if not observed:
        return SampleRatio(1.0, False)
    if total_weight <= 0:
        raise ValueError("the weights must have a positive sum")
    statistic = 0.0
    for count, weight in zip(subjects, weights, strict=True):
        if weight > 0:
            expected = weight / total_weight * observed
            statistic += (count - expected) ** 2 / expected
    p_value = float(_special().chdtrc(len(subjects) - 1, statistic))
    return SampleRatio(p_value, p_value < threshold)


def _special() -> ModuleType:
    """`scipy.special`, imported when first needed: scipy and numpy are ~0.5 s of every
    worker's start, and a worker without experiments never computes a result."""
    from scipy import special

    return special


def _check_parameters(alpha: float, sequential_tuning: float) -> None:
    """Refuse levels and tuning parameters for which gbstats' formulas have no meaning."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not (math.isfinite(sequential_tuning) and sequential_tuning > 0):
        raise ValueError(f"the sequential tuning parameter must be > 0, got {sequential_tuning}")


def _unavailable(a: ArmSummary, b: ArmSummary) -> Unavailable | None:
    """gbstats `TTest.compute_result`'s guards, in its order (mean == 0, then variance <= 0)."""
    if a.mean == 0:
        return Unavailable.ZERO_BASELINE
    if a.variance <= 0 or b.variance <= 0:
        return Unavailable.ZERO_VARIANCE
    return None


def _finite_comparison(
    a: ArmSummary, b: ArmSummary, alpha: float, sequential_tuning: float
) -> Comparison | None:
    """Both lifts of an available comparison, or None when a figure is not a finite float."""
    try:
        dof = _welch_dof(a, b)
        absolute_variance = b.variance / b.n + a.variance / a.n
        # gbstats `frequentist_variance(relative=True)`: the delta method's variance of
        # (mean_b - mean_a) / mean_a, with the control mean's own variance included.
        relative_variance = b.variance / (pow(a.mean, 2) * b.n) + a.variance * pow(b.mean, 2) / (
            pow(a.mean, 4) * a.n
        )
        lifts = [
            _lift(estimate, variance, a.n + b.n, dof, alpha, sequential_tuning)
            for estimate, variance in (
                (b.mean - a.mean, absolute_variance),
                ((b.mean - a.mean) / a.mean, relative_variance),
            )
        ]
    except (ZeroDivisionError, OverflowError):
        return None
    if not (math.isfinite(dof) and all(map(_is_finite, lifts))):
        return None
    return Comparison(a, b, lifts[0], lifts[1], dof, None)


def _lift(
    estimate: float, variance: float, subjects: int, dof: float, alpha: float, tuning: float
) -> Lift:
    """One lift from its estimate and variance: gbstats `TwoSidedTTest` and
    `SequentialTwoSidedTTest` `.compute_result()` with the test value 0.

    The p-value is 2 * sf(|t|) where gbstats writes 2 * (1 - cdf(|t|)): equal to rounding, and
    still positive below 1e-16 where gbstats' difference rounds to 0.
    """
    stddev = math.sqrt(variance)
    width = float(_special().stdtrit(dof, 1 - alpha / 2)) * stddev
    rho = _sequential_rho(alpha, tuning)
    sequential_width = _sequential_halfwidth(variance * subjects, subjects, rho, alpha)
    return Lift(
        estimate=estimate,
        stddev=stddev,
        ci=Interval(estimate - width, estimate + width),
        p_value=2 * float(_special().stdtr(dof, -abs(estimate / stddev))),
        sequential_ci=Interval(estimate - sequential_width, estimate + sequential_width),
        sequential_p_value=_sequential_p_value(estimate, variance, subjects, rho),
    )


def _is_finite(lift: Lift) -> bool:
    """True when every figure of the lift is a finite float and its stddev positive."""
    figures = (
        lift.estimate,
        lift.ci.low,
        lift.ci.high,
        lift.sequential_ci.low,
        lift.sequential_ci.high,
    )
    return (
        all(map(math.isfinite, figures))
        and 0 < lift.stddev < math.inf
        and 0 <= lift.p_value <= 1
        and 0 <= lift.sequential_p_value <= 1
    )


def _welch_dof(a: ArmSummary, b: ArmSummary) -> float:
    """gbstats `TTest.dof`: Welch-Satterthwaite on the arms' absolute variances (also used,
    unchanged, for the relative lift)."""
    return pow(b.variance / b.n + a.variance / a.n, 2) / (
        pow(b.variance, 2) / (pow(b.n, 2) * (b.n - 1))
        + pow(a.variance, 2) / (pow(a.n, 2) * (a.n - 1))
    )


def _sequential_rho(alpha: float, tuning: float) -> float:
    """gbstats `SequentialTwoSidedTTest.rho`: eq. 161 of Waudby-Smith et al., arXiv 2103.06476v7.

    The mixing spread that makes the interval tightest at `tuning` total subjects."""
    return math.sqrt((-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tuning)


def _sequential_halfwidth(s2: float, subjects: int, rho: float, alpha: float) -> float:
    """Half-width of gbstats `SequentialTwoSidedTTest.confidence_interval` (eq. 9 of the paper);
    s2 is the lift's variance times the total subjects N of both arms."""
    spread = subjects * pow(rho, 2) + 1
    return math.sqrt(s2) * math.sqrt(
        2 * spread * math.log(math.sqrt(spread) / alpha) / pow(subjects * rho, 2)
    )


def _sequential_p_value(estimate: float, variance: float, subjects: int, rho: float) -> float:
    """gbstats `SequentialTwoSidedTTest.p_value` (eq. 155): min(1 / e-value, 1).

    Computed in log space so a huge e-value gives p = 0 where gbstats' `np.exp` overflows to
    inf (with a warning) and gives 0 too; the test value is 0, as gbstats' default.
    """
    st2 = pow(estimate, 2) * subjects / variance
    spread = subjects * pow(rho, 2) + 1
    log_evalue = pow(rho, 2) * st2 / (2 * spread) - 0.5 * math.log(spread)
    return min(math.exp(-log_evalue), 1.0)
