"""Guardrails under peeking: A/A experiments checked after every batch, as a worker checks them.

A worker checks each guardrail every time an experiment's partials change, so the check must
keep its error rate however often it looks. The always-valid interval at two-sided alpha 0.05
excludes 0 *at any look* with probability at most 5 % when there is no effect, so at most
2.5 % on the one harmful side of a guardrail (the interval is symmetric, the data too). Over
200 A/A experiments the expected count is at most 5; the test allows 10 (for Binomial(200,
0.025), P(X > 10) = 1.3 %). The simulation is seeded: 1 of 200 breaches (0.5 %; seeds 1-3
give 2, 0, 2). The fixed-horizon interval, peeked at the same 20 times, breaches in 19 of 200
(9.5 %): `test_peeking_at_the_fixed_horizon_interval_would_breach_too_often` shows that check
would fail the bound, so the bound measures something.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from app.engine import CompiledFlag, compile_flag
from app.experiments.attribution import Totals, VariantTotals
from app.experiments.design import ExperimentDesign, design_of
from app.experiments.guardrails import breaches, check
from app.experiments.results import merge, results

EXPERIMENTS = 200
SUBJECTS = 2000  # per arm, at the last look
LOOKS = 20  # a check after every 100 subjects per arm
PARTITIONS = 4  # subjects spread over source partitions, merged at each check as a worker does
NOMINAL = 0.025  # one-sided: half of two-sided alpha 0.05; 5 expected of 200
BOUND = 10  # of 200: P(Binomial(200, NOMINAL) > 10) = 1.3 %

DEFINITION: dict[str, Any] = {
    "state": "ENABLED",
    "variants": {"control": "a", "treatment": "b"},
    "defaultVariant": "control",
    "targeting": {"fractional": [["control", 50], ["treatment", 50]]},
    "metadata": {"experiment": True, "metric.latency_ms": "mean guardrail increase"},
}


def guarded_design() -> ExperimentDesign:
    flag = compile_flag("aa", DEFINITION)
    assert isinstance(flag, CompiledFlag)
    design = design_of(flag, 1)
    assert design is not None
    return design


def simulated_latencies(effect_ms: float, seed: int) -> np.ndarray[Any, Any]:
    """Per experiment, arm and subject a latency (ms): lognormal, heavy-tailed as latencies
    are; the treatment's shifted by `effect_ms`. Shape (EXPERIMENTS, 2, SUBJECTS)."""
    rng = np.random.default_rng(seed)
    values = rng.lognormal(mean=np.log(120.0), sigma=0.5, size=(EXPERIMENTS, 2, SUBJECTS))
    values[:, 1, :] += effect_ms
    return values


def partials_at(latencies: np.ndarray[Any, Any], seen: int) -> list[Totals]:
    """The partials of the first `seen` subjects of each arm, one per source partition."""
    found = []
    for partition in range(PARTITIONS):
        totals = Totals()
        for arm, variant in enumerate(("control", "treatment")):
            values = latencies[arm, :seen][partition::PARTITIONS]
            totals.variants[variant] = VariantTotals(
                subjects=len(values),
                exposures=len(values),
                sums={"latency_ms": float(values.sum())},
                squares={"latency_ms": float((values**2).sum())},
            )
        found.append(totals)
    return found


def breached_experiments(effect_ms: float, seed: int, *, fixed_horizon: bool = False) -> int:
    """How many of the simulated experiments breach at any of the looks."""
    design = guarded_design()
    latencies = simulated_latencies(effect_ms, seed)
    count = 0
    for experiment in range(EXPERIMENTS):
        for look in range(1, LOOKS + 1):
            totals = merge(partials_at(latencies[experiment], look * SUBJECTS // LOOKS))
            if fixed_horizon:
                breached = fixed_horizon_breach(design, totals)
            else:
                breached = bool(check(design, totals))
            if breached:
                count += 1
                break
    return count


def fixed_horizon_breach(design: ExperimentDesign, totals: Totals) -> bool:
    """The mutation: the fixed-horizon interval in place of the always-valid one."""
    found = results(totals, design.variants, design.control, design.kinds)
    comparison = found.metrics[0].comparisons[0]
    return comparison.unavailable is None and comparison.absolute.ci.low > 0


def test_a_a_experiments_breach_at_most_the_nominal_one_sided_rate() -> None:
    count = breached_experiments(effect_ms=0.0, seed=20261130)
    assert count <= BOUND, f"{count} of {EXPERIMENTS} A/A experiments breached"


def test_a_harmful_treatment_is_caught() -> None:
    """The same check has power: +15 ms (about a quarter of a standard deviation) is
    caught in nearly every experiment by the last look."""
    count = breached_experiments(effect_ms=15.0, seed=7)
    assert count >= 0.9 * EXPERIMENTS


def test_peeking_at_the_fixed_horizon_interval_would_breach_too_often() -> None:
    count = breached_experiments(effect_ms=0.0, seed=20261130, fixed_horizon=True)
    assert count > BOUND


def test_breaches_and_check_agree() -> None:
    """`check` is `breaches` over the results of the guardrail metrics."""
    design = guarded_design()
    totals = merge(partials_at(simulated_latencies(15.0, 7)[0], SUBJECTS))
    full = results(totals, design.variants, design.control, design.kinds)
    assert check(design, totals) == breaches(design, full) != []
