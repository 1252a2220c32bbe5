"""The results document: every figure equals `results(merge(partials))`, and what it decides
about metrics, variants, missing numbers and lag."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from app.engine import CompiledFlag, compile_flag
from app.experiments.attribution import Totals, VariantTotals
from app.experiments.design import ExperimentDesign, design_of
from app.experiments.partials import Partial, Progress
from app.experiments.report import lag_json, report, summary
from app.experiments.results import merge, results
from app.experiments.stats import Lift, MetricKind

CONVERSION, MEAN = MetricKind.CONVERSION, MetricKind.MEAN
FOLDED = {"buy": CONVERSION, "spend": MEAN}


def experiment_flag(**metadata: Any) -> dict[str, Any]:
    """An experiment of three variants split 50/25/25, a conversion and a mean metric."""
    return {
        "state": "ENABLED",
        "variants": {"control": "a", "blue": "b", "green": "c"},
        "defaultVariant": "control",
        "targeting": {"fractional": [["control", 50], ["blue", 25], ["green", 25]]},
        "metadata": {
            "experiment": True,
            "metric.buy": "conversion",
            "metric.spend": "mean guardrail decrease",
            **metadata,
        },
    }


def design(key: str = "exp", version: int = 3, **metadata: Any) -> ExperimentDesign:
    compiled = compile_flag(key, experiment_flag(**metadata))
    assert isinstance(compiled, CompiledFlag)
    found = design_of(compiled, version)
    assert found is not None
    return found


def variant_totals(
    subjects: int, converted: int, spend: float, spend_squares: float, windows: dict[int, int]
) -> VariantTotals:
    return VariantTotals(
        subjects,
        subjects + 3,
        subjects // 10,
        {"buy": float(converted), "spend": spend},
        {"buy": float(converted), "spend": spend_squares},
        windows,
    )


def partial(
    partition: int,
    variants: dict[str, VariantTotals],
    *,
    offsets: dict[str, int] | None = None,
    metrics: dict[str, MetricKind] | None = None,
    environment: str = "development",
    experiment: str = "exp",
) -> Partial:
    return Partial(
        environment,
        experiment,
        partition,
        Totals(variants),
        dict(FOLDED if metrics is None else metrics),
        offsets if offsets is not None else {"exposures": 10, "metric-events": 5},
        1_795_600_000.0,
    )


def two_partitions() -> list[Partial]:
    return [
        partial(
            0,
            {
                "control": variant_totals(400, 40, 2_000.0, 19_000.0, {60: 300, 120: 500}),
                "blue": variant_totals(210, 30, 1_150.0, 9_000.0, {60: 150, 120: 230}),
                "green": variant_totals(190, 18, 900.0, 7_700.0, {120: 330}),
            },
        ),
        partial(
            3,
            {
                "control": variant_totals(380, 35, 1_900.0, 17_500.0, {120: 410, 180: 30}),
                "blue": variant_totals(200, 31, 1_200.0, 9_800.0, {180: 260}),
                "green": variant_totals(205, 20, 1_000.0, 8_100.0, {60: 12}),
            },
        ),
    ]


PROGRESS = {
    0: Progress(0, {"exposures": 10}, 4, 1_795_600_010.0),
    1: Progress(1, {"exposures": 7}, 0, 1_795_600_012.5),
}


def document(
    the_design: ExperimentDesign | None, partials: list[Partial], **kwargs: Any
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "now": 1_795_600_015.0,
        "partitions": 2,
        "window_s": 60,
        "sequential_tuning": 5000.0,
    }
    body = report("development", "exp", the_design, partials, PROGRESS, **(fields | kwargs))
    # Strict JSON: a NaN or an infinity would not get through.
    return dict(json.loads(json.dumps(body, allow_nan=False)))


def assert_lift(got: dict[str, Any], lift: Lift) -> None:
    assert got == {
        "estimate": lift.estimate,
        "stddev": lift.stddev,
        "ci": {"low": lift.ci.low, "high": lift.ci.high},
        "p_value": lift.p_value,
        "sequential_ci": {"low": lift.sequential_ci.low, "high": lift.sequential_ci.high},
        "sequential_p_value": lift.sequential_p_value,
    }


def assert_equals_results(
    body: dict[str, Any], partials: list[Partial], d: ExperimentDesign
) -> None:
    """Every figure of the document is the one `results(merge(partials), ...)` computes."""
    want = results(
        merge(p.totals for p in partials),
        d.variants,
        d.control,
        d.kinds,
        weights=d.weights,
        sequential_tuning=5000.0,
    )
    assert body["control"] == want.control
    assert [
        (v["variant"], v["subjects"], v["exposures"], v["crossovers"]) for v in body["variants"]
    ] == [(v.variant, v.subjects, v.exposures, v.crossovers) for v in want.variants]
    assert body["subjects"] == sum(v.subjects for v in want.variants)
    assert body["crossovers"] == sum(v.crossovers for v in want.variants)
    assert want.sample_ratio is not None
    assert body["srm"]["p_value"] == want.sample_ratio.p_value
    assert body["srm"]["mismatch"] == want.sample_ratio.mismatch
    assert body["exposures_series"]["windows"] == [
        {"start": start, "exposures": list(counts)} for start, counts in want.series
    ]
    assert [m["metric"] for m in body["metrics"]] == [m.metric for m in want.metrics]
    for got, metric in zip(body["metrics"], want.metrics, strict=True):
        assert got["kind"] == str(metric.kind)
        assert [(v["n"], v["sum"], v["sum_squares"]) for v in got["variants"]] == [
            (a.n, a.total, a.total_squares) for a in metric.arms
        ]
        for arm_json, comparison_json, comparison in zip(
            got["variants"][1:], got["comparisons"], metric.comparisons, strict=True
        ):
            assert arm_json["mean"] == comparison.treatment.mean
            assert comparison_json["variant"] == arm_json["variant"]
            assert comparison_json["control_mean"] == comparison.control.mean
            assert comparison_json["dof"] == comparison.dof
            assert comparison_json["unavailable"] is None
            assert_lift(comparison_json["absolute"], comparison.absolute)
            assert_lift(comparison_json["relative"], comparison.relative)


def test_every_figure_equals_the_results_of_the_merged_partials() -> None:
    d, partials = design(), two_partitions()
    body = document(d, partials)
    assert_equals_results(body, partials, d)
    assert (body["flag"], body["flag_version"], body["experiment"]) == ("exp", 3, "exp")
    assert [v["weight"] for v in body["variants"]] == [0.5, 0.25, 0.25]
    assert [m["guardrail_harmful"] for m in body["metrics"]] == [None, "decrease"]
    assert body["metrics_unavailable"] == []
    assert body["exposures_series"]["variants"] == ["control", "blue", "green"]
    assert body["exposures_series"]["window_s"] == 60


def test_a_metric_some_partition_has_not_folded_or_folded_as_another_kind_is_not_merged() -> None:
    partials = two_partitions()
    partials[1] = partial(3, dict(partials[1].totals.variants), metrics={"buy": MEAN})
    body = document(design(), partials)
    assert body["metrics"] == []
    assert body["metrics_unavailable"] == [
        {"metric": "buy", "reason": "source partition 3 folded it as mean, not conversion"},
        {"metric": "spend", "reason": "source partition 3 has not folded it yet"},
    ]


def test_a_variant_the_flag_no_longer_has_comes_last_with_weight_zero() -> None:
    partials = two_partitions()
    partials[0].totals.variants["retired"] = variant_totals(7, 1, 10.0, 30.0, {})
    d = design()
    body = document(d, partials)
    assert [(v["variant"], v["weight"]) for v in body["variants"]] == [
        ("control", 0.5),
        ("blue", 0.25),
        ("green", 0.25),
        ("retired", 0.0),
    ]
    assert body["variants"][-1]["subjects"] == 7


def test_without_a_design_the_partials_variants_and_agreed_metrics_are_reported() -> None:
    body = document(None, two_partitions())
    assert [v["variant"] for v in body["variants"]] == ["blue", "control", "green"]
    assert body["control"] == "blue"
    assert body["flag"] is None
    assert body["srm"] == {
        "p_value": None,
        "mismatch": None,
        "threshold": 0.001,
        "unavailable": "the flag has no fractional split to compare subjects with",
    }
    assert [m["metric"] for m in body["metrics"]] == ["buy", "spend"]


def test_a_comparison_gbstats_cannot_make_is_null_with_its_reason() -> None:
    constant = {
        "control": VariantTotals(5, 5, 0, {"buy": 0.0, "spend": 10.0}, {"buy": 0.0, "spend": 20.0}),
        "blue": VariantTotals(5, 5, 0, {"buy": 2.0, "spend": 10.0}, {"buy": 2.0, "spend": 20.0}),
    }
    body = document(design(), [partial(0, constant)])
    buy, spend = body["metrics"]
    assert buy["comparisons"][0]["unavailable"] == "ZERO_NEGATIVE_BASELINE_VARIATION"
    assert spend["comparisons"][0]["unavailable"] == "ZERO_NEGATIVE_VARIANCE"
    for comparison in (*buy["comparisons"], *spend["comparisons"]):
        assert comparison["absolute"] is None and comparison["relative"] is None
        assert comparison["dof"] is None


def test_sums_the_statistics_refuse_make_that_metric_unavailable_not_an_error() -> None:
    huge = {
        "control": VariantTotals(5, 5, 0, {"buy": 1.0, "spend": 1e200}, {"buy": 1.0, "spend": 0.0}),
        "blue": VariantTotals(5, 5, 0, {"buy": 2.0, "spend": 1.0}, {"buy": 2.0, "spend": 1.0}),
    }
    body = document(design(), [partial(0, huge)])
    assert [m["metric"] for m in body["metrics"]] == ["buy"]
    [unavailable] = body["metrics_unavailable"]
    assert unavailable["metric"] == "spend"
    assert unavailable["reason"].startswith("the totals cannot be compared")


def test_no_subjects_yet_is_a_document_with_zeros_not_an_error() -> None:
    body = document(design(), [])
    assert [v["subjects"] for v in body["variants"]] == [0, 0, 0]
    assert body["srm"]["p_value"] == 1.0 and body["srm"]["unavailable"] == "no subjects yet"
    for metric in body["metrics"]:
        assert all(c["unavailable"] for c in metric["comparisons"])
    assert summary(design(), []) == {"subjects": 0, "srm_mismatch": False}
    assert document(None, [])["variants"] == []


def test_the_lag_is_the_worst_partition_and_unknown_while_a_partition_has_not_reported() -> None:
    lag = lag_json(PROGRESS, now=1_795_600_015.0, partitions=2)
    assert lag["worst_behind"] == 4
    assert lag["worst_seconds"] == pytest.approx(5.0)
    assert [(p["partition"], p["behind"], p["seconds"]) for p in lag["partitions"]] == [
        (0, 4, 5.0),
        (1, 0, 2.5),
    ]
    assert lag["missing_partitions"] == []
    waiting = lag_json(PROGRESS, now=1_795_600_015.0, partitions=3)
    assert waiting["missing_partitions"] == [2]
    assert waiting["worst_behind"] is None and waiting["worst_seconds"] is None
    # A clock behind the publisher's does not give a negative lag.
    assert lag_json(PROGRESS, now=0.0, partitions=2)["worst_seconds"] == 0.0
    assert not math.isnan(lag["worst_seconds"])


def test_the_srm_flag_of_the_summary_is_the_documents() -> None:
    skewed = {
        "control": variant_totals(1000, 10, 1.0, 1.0, {}),
        "blue": variant_totals(100, 10, 1.0, 1.0, {}),
        "green": variant_totals(100, 10, 1.0, 1.0, {}),
    }
    body = document(design(), [partial(0, skewed)])
    assert body["srm"]["mismatch"] is True
    assert summary(design(), [partial(0, skewed)]) == {"subjects": 1200, "srm_mismatch": True}
