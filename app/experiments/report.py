"""The results document of one experiment: every figure of the results view, as JSON.

Pure: from the experiment's design (its flag version: variants, control, split, metrics), the
newest partial of each source partition and the partitions' progress, it merges the partials
(`results.merge`) and computes the statistics (`results.results`, equal to gbstats 0.8.0).
docs/experiments.md explains each field.

Decisions:
- Metrics. A metric is reported when the design declares it and every partial was folded with
  it, with the same kind: a partial folded before the metric was declared (or as another kind)
  holds no or other sums for it, and a merge would mix them. The others are listed in
  `metrics_unavailable` with the reason. Without a design (the flag is gone or no longer an
  experiment) the metrics every partial agrees on are reported.
- Variants. The design's, in its order, then any variant only the partials know (a variant the
  flag no longer has), sorted, with split weight 0: gbstats' `check_srm` gives such a variant
  no term but a degree of freedom. Without a design: the partials' variants, sorted; the first
  is the control and there is no SRM check (no split to compare with).
- Numbers. A figure that is not a finite float never reaches JSON: it is null and the object
  it belongs to says why (`unavailable`). A comparison gbstats cannot make is null with
  gbstats' reason (gbstats itself reports 0, [0, 0] and p = 1 there).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from app.experiments.attribution import Totals
from app.experiments.design import ExperimentDesign
from app.experiments.partials import Partial, Progress
from app.experiments.results import ExperimentResults, MetricResults, merge, results
from app.experiments.stats import (
    DEFAULT_ALPHA,
    DEFAULT_SEQUENTIAL_TUNING,
    SRM_THRESHOLD,
    Comparison,
    Lift,
    MetricKind,
    summarize,
)

__all__ = ["Analysis", "analysis_of", "figures", "lag_json", "report", "summary"]

NO_SPLIT: Final = "the flag has no fractional split to compare subjects with"
NO_SUBJECTS_REASON: Final = "no subjects yet"


@dataclass(frozen=True, slots=True)
class Analysis:
    """What the statistics are computed with: the merged totals and how to read them."""

    totals: Totals
    variants: tuple[str, ...]
    control: str
    weights: tuple[float, ...] | None
    metrics: dict[str, MetricKind]
    unavailable: dict[str, str]  # metric -> why it is not reported


def analysis_of(design: ExperimentDesign | None, partials: Sequence[Partial]) -> Analysis:
    """The merged totals, variants, control, weights and metrics of a result (see module doc)."""
    totals = merge(partial.totals for partial in partials)
    seen = sorted(totals.variants)
    if design is None:
        variants = tuple(seen)
        control = variants[0] if variants else ""
        weights = None
        declared: dict[str, MetricKind] = _agreed(partials)
    else:
        extra = [variant for variant in seen if variant not in design.variants]
        variants = design.variants + tuple(extra)
        control = design.control
        weights = None if design.weights is None else design.weights + (0.0,) * len(extra)
        if weights is not None and (len(weights) < 2 or sum(weights) <= 0):
            weights = None  # gbstats' check needs two variants and a split that sends someone
        declared = design.kinds
    metrics, unavailable = {}, {}
    for metric, kind in sorted(declared.items()):
        reason = _disagreement(metric, kind, partials)
        if reason is None:
            metrics[metric] = kind
        else:
            unavailable[metric] = reason
    return Analysis(totals, variants, control, weights, metrics, unavailable)


def report(
    environment: str,
    experiment: str,
    design: ExperimentDesign | None,
    partials: Sequence[Partial],
    progress: Mapping[int, Progress],
    *,
    now: float,
    partitions: int,
    window_s: int,
    sequential_tuning: float,
    alpha: float = DEFAULT_ALPHA,
) -> dict[str, Any]:
    """The results document of an experiment (docs/experiments.md, "The results view")."""
    analysis = analysis_of(design, partials)
    unavailable = dict(analysis.unavailable)
    base = figures(analysis, {}, alpha, sequential_tuning)
    metric_results: list[MetricResults] = []
    for metric, kind in analysis.metrics.items():
        try:
            one = figures(analysis, {metric: kind}, alpha, sequential_tuning)
        except ValueError as exc:  # sums the statistics refuse (e.g. beyond a float's square)
            unavailable[metric] = f"the totals cannot be compared: {exc}"
            continue
        metric_results.extend(one.metrics)
    split = sum(analysis.weights or ())  # > 0 when there are weights (analysis_of)
    harms = {} if design is None else {k: m.guardrail_harmful for k, m in design.metrics.items()}
    return {
        "environment": environment,
        "experiment": experiment,
        "flag": None if design is None else design.flag,
        "flag_version": None if design is None else design.version,
        "control": analysis.control or None,
        "alpha": alpha,
        "sequential_tuning": sequential_tuning,
        "subjects": sum(v.subjects for v in base.variants),
        "crossovers": sum(v.crossovers for v in base.variants),
        "variants": [
            {
                "variant": v.variant,
                "weight": None if analysis.weights is None else analysis.weights[i] / split,
                "subjects": v.subjects,
                "exposures": v.exposures,
                "crossovers": v.crossovers,
            }
            for i, v in enumerate(base.variants)
        ],
        "metrics": [_metric_json(m, base, harms.get(m.metric)) for m in metric_results],
        "metrics_unavailable": [
            {"metric": metric, "reason": reason} for metric, reason in sorted(unavailable.items())
        ],
        "srm": _srm_json(base, analysis),
        "exposures_series": {
            "window_s": window_s,
            "variants": list(analysis.variants),
            "windows": [
                {"start": start, "exposures": list(counts)} for start, counts in base.series
            ],
        },
        "lag": lag_json(progress, now=now, partitions=partitions),
    }


def summary(design: ExperimentDesign | None, partials: Sequence[Partial]) -> dict[str, Any]:
    """What the experiment list shows of one experiment: subjects and the SRM flag."""
    analysis = analysis_of(design, partials)
    base = figures(analysis, {})
    subjects = sum(v.subjects for v in base.variants)
    mismatch = None if base.sample_ratio is None else base.sample_ratio.mismatch
    return {"subjects": subjects, "srm_mismatch": mismatch}


def lag_json(progress: Mapping[int, Progress], *, now: float, partitions: int) -> dict[str, Any]:
    """How far behind the sources the answer is: per source partition the records not yet
    folded when it last reported and the seconds since; the worst of each; and the partitions
    that have not reported (their lag is unknown, so `worst_*` is null while any is missing)."""
    ordered = [p for _, p in sorted(progress.items())]
    seconds = [max(0.0, now - p.at) for p in ordered]
    missing = sorted(set(range(partitions)) - set(progress))
    complete = not missing and bool(ordered)
    return {
        "partitions": [
            {
                "partition": p.partition,
                "behind": p.behind,
                "seconds": age,
                "offsets": dict(sorted(p.offsets.items())),
            }
            for p, age in zip(ordered, seconds, strict=True)
        ],
        "missing_partitions": missing,
        "worst_behind": max(p.behind for p in ordered) if complete else None,
        "worst_seconds": max(seconds) if complete else None,
    }


def figures(
    analysis: Analysis,
    metrics: Mapping[str, MetricKind],
    alpha: float = DEFAULT_ALPHA,
    sequential_tuning: float = DEFAULT_SEQUENTIAL_TUNING,
) -> ExperimentResults:
    """`results.results` of an analysis for `metrics` (the counts and SRM with none)."""
    if not analysis.variants:  # no design and no partial: nothing to compare
        return ExperimentResults((), "", (), None, ())
    return results(
        analysis.totals,
        analysis.variants,
        analysis.control,
        metrics,
        weights=analysis.weights if len(analysis.variants) >= 2 else None,
        alpha=alpha,
        sequential_tuning=sequential_tuning,
    )


def _agreed(partials: Iterable[Partial]) -> dict[str, MetricKind]:
    """The metrics some partial was folded with, each with the first kind seen: the
    disagreements are found by `_disagreement` like the design's."""
    found: dict[str, MetricKind] = {}
    for partial in partials:
        for metric, kind in partial.metrics.items():
            found.setdefault(metric, kind)
    return found


def _disagreement(metric: str, kind: MetricKind, partials: Iterable[Partial]) -> str | None:
    """Why `metric` (as `kind`) cannot be merged from these partials, or None."""
    for partial in partials:
        folded = partial.metrics.get(metric)
        if folded is None:
            return f"source partition {partial.partition} has not folded it yet"
        if folded is not kind:
            return f"source partition {partial.partition} folded it as {folded}, not {kind}"
    return None


def _metric_json(
    metric: MetricResults, base: ExperimentResults, harm: str | None
) -> dict[str, Any]:
    variants = [v.variant for v in base.variants]
    treatments = [v for v in variants if v != base.control]
    return {
        "metric": metric.metric,
        "kind": str(metric.kind),
        "guardrail_harmful": harm,
        "variants": [
            {
                "variant": variant,
                "n": arm.n,
                "sum": arm.total,
                "sum_squares": arm.total_squares,
                "mean": _number(summarize(arm, metric.kind).mean),
            }
            for variant, arm in zip(variants, metric.arms, strict=True)
        ],
        "comparisons": [
            _comparison_json(variant, base.control, comparison)
            for variant, comparison in zip(treatments, metric.comparisons, strict=True)
        ],
    }


def _comparison_json(variant: str, control: str, comparison: Comparison) -> dict[str, Any]:
    available = comparison.unavailable is None
    return {
        "variant": variant,
        "control": control,
        "control_mean": _number(comparison.control.mean),
        "variant_mean": _number(comparison.treatment.mean),
        "unavailable": None if available else str(comparison.unavailable),
        "dof": _number(comparison.dof),
        "absolute": _lift_json(comparison.absolute) if available else None,
        "relative": _lift_json(comparison.relative) if available else None,
    }


def _lift_json(lift: Lift) -> dict[str, Any]:
    return {
        "estimate": _number(lift.estimate),
        "stddev": _number(lift.stddev),
        "ci": {"low": _number(lift.ci.low), "high": _number(lift.ci.high)},
        "p_value": _number(lift.p_value),
        "sequential_ci": {
            "low": _number(lift.sequential_ci.low),
            "high": _number(lift.sequential_ci.high),
        },
        "sequential_p_value": _number(lift.sequential_p_value),
    }


def _srm_json(base: ExperimentResults, analysis: Analysis) -> dict[str, Any]:
    ratio = base.sample_ratio
    if ratio is None:
        return {
            "p_value": None,
            "mismatch": None,
            "threshold": SRM_THRESHOLD,
            "unavailable": NO_SPLIT,
        }
    no_subjects = not any(v.subjects for v in base.variants)
    return {
        "p_value": _number(ratio.p_value),
        "mismatch": ratio.mismatch,
        "threshold": SRM_THRESHOLD,
        "unavailable": NO_SUBJECTS_REASON if no_subjects else None,
    }


def _number(value: float | None) -> float | None:
    """A finite float, or None: JSON has no NaN or infinity (the caller says why)."""
    return value if value is not None and math.isfinite(value) else None
