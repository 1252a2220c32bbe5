"""The offline truth of a simulated experiment: every figure of its results, from the raw records.

Computed independently of the pipeline: the records are parsed with the standard library (not
`app.experiments.sources`), attributed by plain loops written from the rules in
app/experiments/attribution.py's docstring (not by its fold), and compared with scipy.stats
written from gbstats 0.8.0's formulas (`TwoSidedTTest`, `SequentialTwoSidedTTest`,
`check_srm`; not `app.experiments.stats`). The rules, as applied here:

- a subject's variant is the one of its exposure with the smallest (timestamp, exposure id);
  it is a crossover if it was exposed to more than one variant; its exposures are its distinct
  exposure ids (the exposures' contract: one id per exposure, a resent one counts once);
- an event id seen twice is one event, the smaller (timestamp, id, metric, value) of the two;
- an event counts iff first exposure <= its timestamp <= first exposure + attribution window;
  a subject's value of a metric is the sum of its counted values (conversion: 1 if any), 0
  without one, and every exposed subject is one of the metric's n;
- the time series counts each exposure in the window (`series_window_s`) and variant it was
  served, whichever variant its subject ends in.

Run as a module it prints the sufficient statistics of the default scenario, the input of
scripts/gbstats_simulation.py (see there for how tests/experiments/simulation_gbstats.json is
made).
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from app.experiments.stats import MetricKind
from tests.experiments.simulation import EXPOSURES, METRIC_EVENTS, Scenario, scenario

__all__ = [
    "ArmTruth",
    "ComparisonTruth",
    "LiftTruth",
    "MetricTruth",
    "SampleRatioTruth",
    "Truth",
    "VariantTruth",
    "sufficient_statistics",
    "truth",
]

SRM_THRESHOLD = 0.001  # GrowthBook's default


@dataclass(frozen=True)
class VariantTruth:
    variant: str
    subjects: int
    exposures: int
    crossovers: int


@dataclass(frozen=True)
class ArmTruth:
    """One metric in one variant: over its subjects' values."""

    variant: str
    n: int
    total: float  # Σx
    total_squares: float  # Σx²
    mean: float
    variance: float  # gbstats': p(1 - p) for a conversion, the sample variance for a mean


@dataclass(frozen=True)
class LiftTruth:
    estimate: float
    stddev: float
    ci: tuple[float, float]
    p_value: float
    sequential_ci: tuple[float, float]
    sequential_p_value: float


@dataclass(frozen=True)
class ComparisonTruth:
    """A treatment against the control: absolute and relative lift, Welch's dof."""

    variant: str
    absolute: LiftTruth
    relative: LiftTruth
    dof: float


@dataclass(frozen=True)
class MetricTruth:
    metric: str
    kind: MetricKind
    arms: tuple[ArmTruth, ...]  # in variant order
    comparisons: tuple[ComparisonTruth, ...]  # every variant but the control, in variant order


@dataclass(frozen=True)
class SampleRatioTruth:
    statistic: float  # chi-square
    p_value: float
    mismatch: bool


@dataclass(frozen=True)
class Truth:
    """Every figure of the experiment's results, in the scenario's variant order."""

    control: str
    variants: tuple[VariantTruth, ...]
    metrics: tuple[MetricTruth, ...]  # by metric key
    sample_ratio: SampleRatioTruth
    series: tuple[tuple[int, tuple[int, ...]], ...]  # (window start, exposures per variant)
    ignored: dict[str, int]  # the records that count nowhere, by why (for the report)


@dataclass
class _Subject:
    exposures: dict[str, tuple[float, str]]  # exposure id -> (timestamp, variant)
    events: dict[str, tuple[float, str, str, float]]  # event id -> (timestamp, id, metric, value)


def truth(sim: Scenario) -> Truth:
    """Every figure of the results of `sim`, from its raw records."""
    subjects = _subjects(sim)
    exposed = {key: s for key, s in subjects.items() if s.exposures}
    variant_of = {key: _first(s)[1] for key, s in exposed.items()}
    counts = tuple(
        VariantTruth(
            variant,
            sum(1 for key in exposed if variant_of[key] == variant),
            sum(len(s.exposures) for key, s in exposed.items() if variant_of[key] == variant),
            sum(1 for key, s in exposed.items() if variant_of[key] == variant and _crossed(s)),
        )
        for variant in sim.variants
    )
    metrics = tuple(
        _metric_truth(sim, metric, kind, exposed, variant_of)
        for metric, kind in sorted(sim.metrics.items())
    )
    return Truth(
        sim.control,
        counts,
        metrics,
        _sample_ratio([v.subjects for v in counts], sim.weights),
        _series(sim, exposed),
        _ignored(sim, subjects),
    )


def _subjects(sim: Scenario) -> dict[str, _Subject]:
    """Each subject's distinct exposures of the experiment and its distinct events."""
    subjects: dict[str, _Subject] = defaultdict(lambda: _Subject({}, {}))
    for _, value in sim.records[EXPOSURES]:
        record = json.loads(value)
        if (record["environment"], record["experiment"]) != (sim.environment, sim.experiment):
            continue
        subject = subjects[record["targeting_key"]]
        subject.exposures[record["exposure_id"]] = (record["timestamp"], record["variant"])
    for _, value in sim.records[METRIC_EVENTS]:
        record = json.loads(value)
        if record["environment"] != sim.environment:
            continue
        event = (record["timestamp"], record["event_id"], record["metric"], record["value"])
        events = subjects[record["targeting_key"]].events
        events[event[1]] = min(events.get(event[1], event), event)
    return dict(subjects)


def _first(subject: _Subject) -> tuple[float, str]:
    """(timestamp, variant) of the subject's first exposure: smallest (timestamp, id)."""
    timestamp, ident = min((ts, ident) for ident, (ts, _) in subject.exposures.items())
    return timestamp, subject.exposures[ident][1]


def _crossed(subject: _Subject) -> bool:
    return len({variant for _, variant in subject.exposures.values()}) > 1


def _value(subject: _Subject, metric: str, kind: MetricKind, window_s: float) -> float:
    start, _ = _first(subject)
    counted = [
        value
        for timestamp, _, name, value in subject.events.values()
        if name == metric and start <= timestamp <= start + window_s
    ]
    if kind is MetricKind.CONVERSION:
        return 1.0 if counted else 0.0
    return math.fsum(counted)


def _metric_truth(
    sim: Scenario,
    metric: str,
    kind: MetricKind,
    exposed: dict[str, _Subject],
    variant_of: dict[str, str],
) -> MetricTruth:
    values: dict[str, list[float]] = {variant: [] for variant in sim.variants}
    for key, subject in exposed.items():
        values[variant_of[key]].append(_value(subject, metric, kind, sim.attribution_window_s))
    arms = tuple(_arm(variant, np.array(values[variant]), kind) for variant in sim.variants)
    control = arms[sim.variants.index(sim.control)]
    comparisons = tuple(
        _comparison(control, arm, sim.alpha, sim.sequential_tuning)
        for arm in arms
        if arm.variant != sim.control
    )
    return MetricTruth(metric, kind, arms, comparisons)


def _arm(variant: str, values: np.ndarray, kind: MetricKind) -> ArmTruth:
    n = len(values)
    mean = float(values.mean())
    # gbstats: p(1 - p) for a ProportionStatistic, the sample variance for a SampleMeanStatistic
    conversion = kind is MetricKind.CONVERSION
    variance = mean * (1 - mean) if conversion else float(values.var(ddof=1))
    total = math.fsum(values)
    squares = math.fsum(values * values)
    return ArmTruth(variant, n, total, squares, mean, variance)


def _comparison(a: ArmTruth, b: ArmTruth, alpha: float, tuning: float) -> ComparisonTruth:
    """gbstats' two-sided t-test and sequential test of b against a, with scipy.stats.t."""
    if a.mean == 0 or a.variance <= 0 or b.variance <= 0:
        raise AssertionError("the simulation must make every comparison available")
    dof = (a.variance / a.n + b.variance / b.n) ** 2 / (
        a.variance**2 / (a.n**2 * (a.n - 1)) + b.variance**2 / (b.n**2 * (b.n - 1))
    )
    absolute_variance = b.variance / b.n + a.variance / a.n
    relative_variance = b.variance / (a.mean**2 * b.n) + a.variance * b.mean**2 / (a.mean**4 * a.n)
    subjects = a.n + b.n
    return ComparisonTruth(
        b.variant,
        _lift(b.mean - a.mean, absolute_variance, dof, subjects, alpha, tuning),
        _lift((b.mean - a.mean) / a.mean, relative_variance, dof, subjects, alpha, tuning),
        dof,
    )


def _lift(
    estimate: float, variance: float, dof: float, subjects: int, alpha: float, tuning: float
) -> LiftTruth:
    stddev = math.sqrt(variance)
    width = float(stats.t.ppf(1 - alpha / 2, dof)) * stddev
    p_value = 2 * float(stats.t.sf(abs(estimate) / stddev, dof))
    # Waudby-Smith et al., arXiv 2103.06476v7: rho eq. 161, interval eq. 9, p-value eq. 155
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tuning
    spread = subjects * rho2 + 1
    sequential_width = math.sqrt(variance * subjects) * math.sqrt(
        2 * spread * math.log(math.sqrt(spread) / alpha) / (subjects**2 * rho2)
    )
    st2 = estimate**2 * subjects / variance
    evalue = math.exp(rho2 * st2 / (2 * spread)) / math.sqrt(spread)
    return LiftTruth(
        estimate,
        stddev,
        (estimate - width, estimate + width),
        p_value,
        (estimate - sequential_width, estimate + sequential_width),
        min(1 / evalue, 1.0),
    )


def _sample_ratio(subjects: Sequence[int], weights: Sequence[float]) -> SampleRatioTruth:
    total = sum(subjects)
    expected = [w / sum(weights) * total for w in weights]
    statistic, p_value = stats.chisquare(subjects, f_exp=expected)
    return SampleRatioTruth(float(statistic), float(p_value), float(p_value) < SRM_THRESHOLD)


def _series(sim: Scenario, exposed: dict[str, _Subject]) -> tuple[tuple[int, tuple[int, ...]], ...]:
    width = sim.series_window_s
    per_window: dict[int, list[int]] = defaultdict(lambda: [0] * len(sim.variants))
    for subject in exposed.values():
        for timestamp, variant in subject.exposures.values():
            per_window[math.floor(timestamp / width) * width][sim.variants.index(variant)] += 1
    if len(per_window) > 1440:
        raise AssertionError("the simulation must fit the windows the fold keeps")
    return tuple((start, tuple(per_window[start])) for start in sorted(per_window))


def _ignored(sim: Scenario, subjects: dict[str, _Subject]) -> dict[str, int]:
    """The distinct events that count for no subject, by why."""
    ignored: dict[str, int] = defaultdict(int)
    for subject in subjects.values():
        if len(subject.events) > 1000:
            raise AssertionError("the simulation must keep under the fold's MAX_EVENTS")
        start = _first(subject)[0] if subject.exposures else None
        for timestamp, _, metric, _ in subject.events.values():
            if start is None:
                ignored["subject never exposed"] += 1
            elif metric not in sim.metrics:
                ignored["metric not declared"] += 1
            elif timestamp < start:
                ignored["before the first exposure"] += 1
            elif timestamp > start + sim.attribution_window_s:
                ignored["after the attribution window"] += 1
    return dict(ignored)


def sufficient_statistics(sim: Scenario, found: Truth) -> dict[str, Any]:
    """What gbstats needs: per metric the arms' (n, Σx, Σx²), control first, and the SRM input."""
    control = sim.variants.index(sim.control)

    def control_first(items: Iterable[Any]) -> list[Any]:
        items = list(items)
        return [items[control], *items[:control], *items[control + 1 :]]

    return {
        "seed": sim.seed,
        "alpha": sim.alpha,
        "sequential_tuning": sim.sequential_tuning,
        "variants": control_first(sim.variants),
        "metrics": {
            m.metric: {
                "kind": str(m.kind),
                "arms": control_first([a.n, a.total, a.total_squares] for a in m.arms),
            }
            for m in found.metrics
        },
        "sample_ratio": {
            "subjects": [v.subjects for v in found.variants],
            "weights": list(sim.weights),
        },
    }


def main() -> None:
    sim = scenario()
    json.dump(sufficient_statistics(sim, truth(sim)), sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()


# Figures by path ("metric/revenue/green/relative/ci_low"), to compare any two sources of them:
# counts, flags and names exactly, p-values to an absolute 1e-9, other floats to a relative 1e-9.
Figures = dict[str, float | int | bool | str]
RELATIVE = 1e-9
ABSOLUTE_P = 1e-9


def _lift_figures(into: Figures, path: str, lift: Any) -> None:
    """A lift's figures; `lift` is a LiftTruth or an app.experiments.stats.Lift."""
    ci = lift.ci if isinstance(lift.ci, tuple) else (lift.ci.low, lift.ci.high)
    seq = lift.sequential_ci
    seq = seq if isinstance(seq, tuple) else (seq.low, seq.high)
    into[f"{path}/estimate"] = lift.estimate
    into[f"{path}/stddev"] = lift.stddev
    into[f"{path}/ci_low"], into[f"{path}/ci_high"] = ci
    into[f"{path}/p_value"] = lift.p_value
    into[f"{path}/sequential_ci_low"], into[f"{path}/sequential_ci_high"] = seq
    into[f"{path}/sequential_p_value"] = lift.sequential_p_value


def truth_figures(found: Truth) -> Figures:
    """Every figure of the truth, by path."""
    figures: Figures = {"control": found.control}
    for v in found.variants:
        figures |= {
            f"variant/{v.variant}/subjects": v.subjects,
            f"variant/{v.variant}/exposures": v.exposures,
            f"variant/{v.variant}/crossovers": v.crossovers,
        }
    for m in found.metrics:
        figures[f"metric/{m.metric}/kind"] = str(m.kind)
        for a in m.arms:
            path = f"metric/{m.metric}/{a.variant}"
            figures |= {
                f"{path}/n": a.n,
                f"{path}/total": a.total,
                f"{path}/total_squares": a.total_squares,
                f"{path}/mean": a.mean,
                f"{path}/variance": a.variance,
            }
        for c in m.comparisons:
            path = f"metric/{m.metric}/{c.variant}"
            figures[f"{path}/dof"] = c.dof
            _lift_figures(figures, f"{path}/absolute", c.absolute)
            _lift_figures(figures, f"{path}/relative", c.relative)
    figures["srm/p_value"] = found.sample_ratio.p_value
    figures["srm/mismatch"] = found.sample_ratio.mismatch
    for start, counts in found.series:
        for variant, count in zip((v.variant for v in found.variants), counts, strict=True):
            figures[f"series/{start}/{variant}"] = count
    return figures


def results_figures(found: Any) -> Figures:
    """Every figure of an `app.experiments.results.ExperimentResults`, by the truth's paths."""
    variants = [v.variant for v in found.variants]
    figures: Figures = {"control": found.control}
    for v in found.variants:
        figures |= {
            f"variant/{v.variant}/subjects": v.subjects,
            f"variant/{v.variant}/exposures": v.exposures,
            f"variant/{v.variant}/crossovers": v.crossovers,
        }
    for m in found.metrics:
        figures[f"metric/{m.metric}/kind"] = str(m.kind)
        treated = [v for v in variants if v != found.control]
        for variant, arm in zip(variants, m.arms, strict=True):
            path = f"metric/{m.metric}/{variant}"
            figures |= {
                f"{path}/n": arm.n,
                f"{path}/total": arm.total,
                f"{path}/total_squares": arm.total_squares,
            }
        for variant, c in zip(treated, m.comparisons, strict=True):
            path = f"metric/{m.metric}/{variant}"
            control = f"metric/{m.metric}/{found.control}"
            figures |= {
                f"{control}/mean": c.control.mean,
                f"{control}/variance": c.control.variance,
                f"{path}/mean": c.treatment.mean,
                f"{path}/variance": c.treatment.variance,
                f"{path}/dof": c.dof,
            }
            _lift_figures(figures, f"{path}/absolute", c.absolute)
            _lift_figures(figures, f"{path}/relative", c.relative)
    if found.sample_ratio is not None:
        figures["srm/p_value"] = found.sample_ratio.p_value
        figures["srm/mismatch"] = found.sample_ratio.mismatch
    for start, counts in found.series:
        for variant, count in zip(variants, counts, strict=True):
            figures[f"series/{start}/{variant}"] = count
    return figures


def gbstats_figures(document: dict[str, Any]) -> Figures:
    """The figures gbstats gave (scripts/gbstats_simulation.py's output), by the truth's paths."""
    variants = document["input"]["variants"]  # control first
    figures: Figures = {"srm/p_value": document["sample_ratio_p_value"]}
    for metric, vectors in document["comparisons"].items():
        for variant, expected in zip(variants[1:], vectors["expected"], strict=True):
            path, control = f"metric/{metric}/{variant}", f"metric/{metric}/{variants[0]}"
            figures |= {
                f"{control}/mean": expected["control_mean"],
                f"{control}/variance": expected["control_variance"],
                f"{path}/mean": expected["treatment_mean"],
                f"{path}/variance": expected["treatment_variance"],
                f"{path}/dof": expected["dof"],
            }
            for kind in ("absolute", "relative"):
                lift = expected[kind]
                figures |= {
                    f"{path}/{kind}/estimate": lift["estimate"],
                    f"{path}/{kind}/stddev": lift["stddev"],
                    f"{path}/{kind}/ci_low": lift["ci"][0],
                    f"{path}/{kind}/ci_high": lift["ci"][1],
                    f"{path}/{kind}/p_value": lift["p_value"],
                    f"{path}/{kind}/sequential_ci_low": lift["sequential_ci"][0],
                    f"{path}/{kind}/sequential_ci_high": lift["sequential_ci"][1],
                    f"{path}/{kind}/sequential_p_value": lift["sequential_p_value"],
                }
    return figures


def _same(path: str, expected: float | int | bool | str, found: float | int | bool | str) -> bool:
    if isinstance(expected, bool | int | str) and not isinstance(expected, float):
        return type(found) is type(expected) and found == expected
    if not isinstance(found, int | float) or isinstance(found, bool):
        return False
    if path.endswith("p_value"):
        return math.isclose(found, expected, rel_tol=0, abs_tol=ABSOLUTE_P)
    return math.isclose(found, expected, rel_tol=RELATIVE, abs_tol=1e-300)


def differences(expected: Figures, found: Figures) -> list[str]:
    """Each figure of `expected` that `found` lacks or differs in, as 'path: expected != found'."""
    return [
        f"{path}: {value!r} != {found.get(path, 'missing')!r}"
        for path, value in expected.items()
        if path not in found or not _same(path, value, found[path])
    ]


def report_figures(document: dict[str, Any]) -> Figures:
    """The figures of a results document (app/experiments/report.py, the results view's
    JSON), by the truth's paths; those it shows as unavailable are left out (so missing when
    compared). The document has no variances."""
    figures: Figures = {"control": document["control"]}
    for v in document["variants"]:
        for name in ("subjects", "exposures", "crossovers"):
            figures[f"variant/{v['variant']}/{name}"] = v[name]
    for m in document["metrics"]:
        figures[f"metric/{m['metric']}/kind"] = m["kind"]
        for arm in m["variants"]:
            path = f"metric/{m['metric']}/{arm['variant']}"
            figures |= {
                f"{path}/n": arm["n"],
                f"{path}/total": arm["sum"],
                f"{path}/total_squares": arm["sum_squares"],
                f"{path}/mean": arm["mean"],
            }
        for c in m["comparisons"]:
            path = f"metric/{m['metric']}/{c['variant']}"
            figures[f"{path}/dof"] = c["dof"]
            for kind in ("absolute", "relative"):
                lift = c[kind]
                if lift is None:  # unavailable (see c["unavailable"]): its figures are missing
                    continue
                figures |= {
                    f"{path}/{kind}/estimate": lift["estimate"],
                    f"{path}/{kind}/stddev": lift["stddev"],
                    f"{path}/{kind}/ci_low": lift["ci"]["low"],
                    f"{path}/{kind}/ci_high": lift["ci"]["high"],
                    f"{path}/{kind}/p_value": lift["p_value"],
                    f"{path}/{kind}/sequential_ci_low": lift["sequential_ci"]["low"],
                    f"{path}/{kind}/sequential_ci_high": lift["sequential_ci"]["high"],
                    f"{path}/{kind}/sequential_p_value": lift["sequential_p_value"],
                }
    figures["srm/p_value"] = document["srm"]["p_value"]
    figures["srm/mismatch"] = document["srm"]["mismatch"]
    series = document["exposures_series"]
    for window in series["windows"]:
        for variant, count in zip(series["variants"], window["exposures"], strict=True):
            figures[f"series/{window['start']}/{variant}"] = count
    return figures


def report_differences(found: Truth, document: dict[str, Any]) -> list[str]:
    """Each figure of a results document that differs from the truth, and each figure of the
    truth that a results document should show but does not (all but the variances)."""
    expected = {k: v for k, v in truth_figures(found).items() if not k.endswith("/variance")}
    expected["subjects"] = sum(v.subjects for v in found.variants)
    expected["crossovers"] = sum(v.crossovers for v in found.variants)
    shown = report_figures(document) | {
        "subjects": document["subjects"],
        "crossovers": document["crossovers"],
    }
    extra = [f"{path}: not a figure of the truth" for path in shown if path not in expected]
    return differences(expected, shown) + extra
