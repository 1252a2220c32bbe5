"""Guardrails: when a treatment breaches one, and the rollback that puts everyone on the control."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from app.control import changes
from app.engine import CompiledFlag, compile_flag, evaluate
from app.engine.schema import flag_problems
from app.experiments import guardrails
from app.experiments import metrics as experiment_metrics
from app.experiments.attribution import Contribution, Totals
from app.experiments.design import ExperimentDesign, design_of
from app.experiments.guardrails import (
    ROLLBACK_NOTE_KEY,
    Breach,
    actor,
    breaches,
    guarded,
    rollback_change_id,
    rollback_definition,
    serves_only_control,
)
from app.experiments.results import ExperimentResults, MetricResults, VariantCounts, results
from app.experiments.stats import (
    ArmStatistics,
    ArmSummary,
    Comparison,
    Interval,
    Lift,
    MetricKind,
    Unavailable,
)

DEFINITION: dict[str, Any] = {
    "state": "ENABLED",
    "variants": {"off": "a", "on": "b", "alt": "c"},
    "defaultVariant": "on",
    "targeting": {
        "if": [
            {"==": [{"var": "country"}, "nz"]},
            "alt",
            {"fractional": [["off", 40], ["on", 40], ["alt", 20]]},
        ]
    },
    "metadata": {
        "experiment": True,
        "owner": "checkout",
        "metric.latency_ms": "mean guardrail increase",
        "metric.purchase": "conversion guardrail decrease",
        "metric.revenue": "mean",
    },
}


def compiled(definition: dict[str, Any], key: str = "checkout") -> CompiledFlag:
    flag = compile_flag(key, definition)
    assert isinstance(flag, CompiledFlag), flag
    return flag


def design(definition: dict[str, Any] = DEFINITION, version: int = 3) -> ExperimentDesign:
    found = design_of(compiled(definition), version)
    assert found is not None
    return found


def lift(low: float, high: float, *, fixed: Interval | None = None) -> Lift:
    middle = (low + high) / 2
    return Lift(middle, 1.0, fixed or Interval(low, high), 0.5, Interval(low, high), 0.5)


def one_comparison(
    metric: str, kind: MetricKind, absolute: Lift, unavailable: Unavailable | None = None
) -> ExperimentResults:
    """Results where the control "off" and "alt" are equal and "on" has the given lift."""
    summary = ArmSummary(1000, 10.0, 4.0)
    neutral = lift(-1.0, 1.0)
    comparisons = (
        Comparison(summary, ArmSummary(900, 11.0, 4.0), absolute, absolute, 1800.0, unavailable),
        Comparison(summary, summary, neutral, neutral, 1800.0, None),
    )
    arms = (ArmStatistics(1000, 1.0, 1.0),) * 3
    counts = tuple(VariantCounts(v, 1000, 1000, 0) for v in ("off", "on", "alt"))
    return ExperimentResults(
        counts, "off", (MetricResults(metric, kind, arms, comparisons),), None, ()
    )


MEAN, CONVERSION = MetricKind.MEAN, MetricKind.CONVERSION
# (case, metric, kind, always-valid interval of "on" - "off", unavailable, breached)
CASES = [
    ("increase above 0", "latency_ms", MEAN, (0.1, 0.5), None, True),
    ("increase touching 0", "latency_ms", MEAN, (0.0, 0.5), None, False),
    ("increase across 0", "latency_ms", MEAN, (-0.2, 0.5), None, False),
    ("increase guardrail going down", "latency_ms", MEAN, (-0.5, -0.1), None, False),
    ("decrease below 0", "purchase", CONVERSION, (-0.05, -0.01), None, True),
    ("decrease touching 0", "purchase", CONVERSION, (-0.05, 0.0), None, False),
    ("decrease across 0", "purchase", CONVERSION, (-0.05, 0.01), None, False),
    ("decrease guardrail going up", "purchase", CONVERSION, (0.01, 0.05), None, False),
    ("not a guardrail", "revenue", MEAN, (0.1, 0.5), None, False),
    ("undeclared metric", "clicks", MEAN, (0.1, 0.5), None, False),
    ("unavailable", "latency_ms", MEAN, (0.1, 0.5), Unavailable.ZERO_VARIANCE, False),
]


@pytest.mark.parametrize(
    ("metric", "kind", "interval", "unavailable", "breached"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_a_treatment_breaches_when_its_always_valid_interval_is_on_the_harmful_side(
    metric: str,
    kind: MetricKind,
    interval: tuple[float, float],
    unavailable: Unavailable | None,
    breached: bool,
) -> None:
    got = breaches(design(), one_comparison(metric, kind, lift(*interval), unavailable))
    assert [(b.metric, b.variant, b.interval) for b in got] == (
        [(metric, "on", Interval(*interval))] if breached else []
    )


def test_the_fixed_horizon_interval_alone_is_no_breach() -> None:
    """Peeking makes the fixed-horizon interval exclude 0 too often: only the always-valid
    one counts."""
    peeked = lift(-0.1, 0.5, fixed=Interval(0.05, 0.35))
    assert breaches(design(), one_comparison("latency_ms", MEAN, peeked)) == []


def test_guardrails_are_the_metrics_declared_with_a_harmful_direction() -> None:
    assert guarded(design()) == {"latency_ms": "increase", "purchase": "decrease"}


def test_a_breach_carries_the_figures_of_the_results() -> None:
    """Through the real statistics: "on" adds 5 ms to every subject's latency."""
    totals = Totals()
    for index in range(400):
        base = float(100 + index % 7)
        for variant, value in (("off", base), ("on", base + 5.0), ("alt", base)):
            totals.move(None, Contribution(variant, 1, False, (("latency_ms", value),)))
    plan = design()
    got = breaches(plan, results(totals, plan.variants, plan.control, plan.kinds))
    assert len(got) == 1
    breach = got[0]
    assert (breach.metric, breach.variant, breach.control, breach.harm) == (
        "latency_ms",
        "on",
        "off",
        "increase",
    )
    assert breach.lift == pytest.approx(5.0)
    assert breach.relative_lift == pytest.approx(5.0 / (sum(100 + i % 7 for i in range(400)) / 400))
    assert 0 < breach.interval.low < 5.0 < breach.interval.high
    assert (breach.control_n, breach.treatment_n) == (400, 400)


BREACH = Breach("latency_ms", "on", "off", "increase", 5.0, Interval(2.0, 8.0), 0.05, 400, 410)


def test_the_rollback_gives_everyone_the_control_and_keeps_the_experiment() -> None:
    plan = design()
    before = copy.deepcopy(DEFINITION)
    rolled = rollback_definition(DEFINITION, plan, BREACH)
    assert before == DEFINITION  # the current definition is not touched
    assert flag_problems(rolled) == []
    assert experiment_metrics.problems(rolled) == []
    flag = compiled(rolled)
    for index in range(500):
        context = {"targetingKey": f"user-{index}", "country": ("nz", "de")[index % 2]}
        assert evaluate(flag, context, 0).variant == "off"
    assert flag.variants == compiled(DEFINITION).variants
    assert {k: v for k, v in flag.metadata.items() if k != ROLLBACK_NOTE_KEY} == DEFINITION[
        "metadata"
    ]
    note = flag.metadata[ROLLBACK_NOTE_KEY]
    assert isinstance(note, str)
    assert all(part in note for part in ("version 3", "'off'", "'latency_ms'", "'on'"))
    # Still the same experiment with the same control, and nothing left to roll back.
    after = design(rolled, 4)
    assert (after.experiment, after.control, after.metrics) == (
        plan.experiment,
        plan.control,
        plan.metrics,
    )
    assert serves_only_control(flag, after)
    assert not serves_only_control(compiled(DEFINITION), plan)


def test_a_named_control_is_the_one_everyone_gets() -> None:
    named = copy.deepcopy(DEFINITION)
    named["metadata"]["control"] = "alt"
    plan = design(named)
    flag = compiled(rollback_definition(named, plan, BREACH))
    assert plan.control == "alt"
    assert evaluate(flag, {"targetingKey": "u", "country": "de"}, 0).variant == "alt"


def test_a_disabled_flag_has_nothing_to_roll_back() -> None:
    disabled = {**DEFINITION, "state": "DISABLED"}
    assert serves_only_control(compiled(disabled), design(disabled))


def test_the_change_id_names_the_version_and_metric_within_the_change_id_limit() -> None:
    assert rollback_change_id("prod", "checkout", 3, "latency_ms") == (
        "guardrail:prod:checkout:3:latency_ms"
    )
    long = rollback_change_id("e" * 128, "f" * 128, 12, "m" * 128)
    assert long == rollback_change_id("e" * 128, "f" * 128, 12, "m" * 128)
    assert long != rollback_change_id("e" * 128, "f" * 128, 13, "m" * 128)
    assert long.startswith("guardrail:")
    assert len(long) <= changes.MAX_CHANGE_ID
    assert guardrails.MAX_CHANGE_ID == changes.MAX_CHANGE_ID


def test_the_actor_says_why_with_the_figures() -> None:
    said = actor(BREACH, 0.95)
    assert said == (
        "guardrail: latency_ms increase in on vs off: lift +5 (+5.00%), always-valid 95% "
        "interval [+2, +8], n 410 vs 400"
    )
    huge = Breach("m" * 128, "v" * 1000, "c" * 1000, "decrease", -1.0, Interval(-2, -1), 0, 9, 9)
    assert len(actor(huge, 0.95)) <= 512
