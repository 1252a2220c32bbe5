"""An experiment's results from its totals: per-partition partials merged, then compared.

Each source partition's owner keeps its own `Totals` (app/experiments/attribution.py); a result
is read by summing them (`merge`: sums of counts, of Σx and of Σx² are the statistics of the
union, since every subject lives in one partition) and handing each metric's arms to
`app.experiments.stats`, treatments against the control, with the sample-ratio check against
the split the flag's `fractional` rule gives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from app.experiments.attribution import Totals, VariantTotals
from app.experiments.stats import (
    DEFAULT_ALPHA,
    DEFAULT_SEQUENTIAL_TUNING,
    ArmStatistics,
    Comparison,
    MetricKind,
    SampleRatio,
    check_sample_ratio,
    compare_to_control,
)

__all__ = ["ExperimentResults", "MetricResults", "VariantCounts", "merge", "results"]


@dataclass(frozen=True, slots=True)
class VariantCounts:
    variant: str
    subjects: int
    exposures: int
    crossovers: int


@dataclass(frozen=True, slots=True)
class MetricResults:
    """One metric: each variant's sufficient statistics, each treatment against the control."""

    metric: str
    kind: MetricKind
    arms: tuple[ArmStatistics, ...]  # in the order of `ExperimentResults.variants`
    comparisons: tuple[Comparison, ...]  # each variant but the control, in variant order


@dataclass(frozen=True, slots=True)
class ExperimentResults:
    variants: tuple[VariantCounts, ...]
    control: str
    metrics: tuple[MetricResults, ...]
    sample_ratio: SampleRatio | None  # None without the split's weights
    # (window start, exposures per variant in variant order), oldest first
    series: tuple[tuple[int, tuple[int, ...]], ...]


def merge(partials: Iterable[Totals]) -> Totals:
    """The totals of the union of the partitions' subjects."""
    merged = Totals()
    for partial in partials:
        for variant, part in partial.variants.items():
            into = merged.variants.setdefault(variant, VariantTotals())
            into.subjects += part.subjects
            into.exposures += part.exposures
            into.crossovers += part.crossovers
            for metric, value in part.sums.items():
                into.sums[metric] = into.sums.get(metric, 0.0) + value
            for metric, value in part.squares.items():
                into.squares[metric] = into.squares.get(metric, 0.0) + value
            for start, count in part.windows.items():
                into.windows[start] = into.windows.get(start, 0) + count
    return merged


def results(
    totals: Totals,
    variants: Sequence[str],
    control: str,
    metrics: Mapping[str, MetricKind],
    *,
    weights: Sequence[float] | None = None,
    alpha: float = DEFAULT_ALPHA,
    sequential_tuning: float = DEFAULT_SEQUENTIAL_TUNING,
) -> ExperimentResults:
    """Every figure of the results view. `variants` are the flag's, in its order (a variant
    no subject saw has n = 0); `weights` its split, in the same order, for the SRM check."""
    if control not in variants:
        raise ValueError(f"the control {control!r} is not a variant of the experiment")
    per_variant = [totals.variants.get(variant, VariantTotals()) for variant in variants]
    counts = tuple(
        VariantCounts(variant, t.subjects, t.exposures, t.crossovers)
        for variant, t in zip(variants, per_variant, strict=True)
    )
    index = list(variants).index(control)
    metric_results = tuple(
        _metric(metric, kind, per_variant, index, alpha, sequential_tuning)
        for metric, kind in sorted(metrics.items())
    )
    ratio = None
    if weights is not None:
        ratio = check_sample_ratio([t.subjects for t in per_variant], weights)
    starts = sorted({start for t in per_variant for start in t.windows})
    series = tuple((start, tuple(t.windows.get(start, 0) for t in per_variant)) for start in starts)
    return ExperimentResults(counts, control, metric_results, ratio, series)


def _metric(
    metric: str,
    kind: MetricKind,
    per_variant: Sequence[VariantTotals],
    control: int,
    alpha: float,
    sequential_tuning: float,
) -> MetricResults:
    arms = tuple(
        ArmStatistics(t.subjects, t.sums.get(metric, 0.0), t.squares.get(metric, 0.0))
        for t in per_variant
    )
    comparisons = compare_to_control(
        arms, kind, control=control, alpha=alpha, sequential_tuning=sequential_tuning
    )
    return MetricResults(metric, kind, arms, comparisons)
