"""Write the test vectors that hold app/experiments/stats.py equal to GrowthBook's gbstats.

gbstats pins old pandas/numpy, so it is an oracle kept out of the project's environment: run
this with a separate venv's python, never the project's:

    python3.11 -m venv /tmp/gbvenv && /tmp/gbvenv/bin/pip install gbstats==0.8.0
    /tmp/gbvenv/bin/python scripts/gbstats_vectors.py > tests/app/experiments/gbstats_vectors.json

The cases are seeded (same file every run with the same gbstats/scipy): small and large n,
rates near 0 and 1, equal means, negative lifts, unequal variances, 2-4 variants, gbstats' edge
cases (n < 2, zero variance, control mean 0, negative control mean), several alphas and
sequential tuning parameters, and sample-ratio checks with and without mismatch.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import warnings
from typing import Any

import numpy as np
from gbstats.frequentist.tests import (
    FrequentistConfig,
    SequentialConfig,
    SequentialTwoSidedTTest,
    TwoSidedTTest,
)
from gbstats.models.statistics import ProportionStatistic, SampleMeanStatistic
from gbstats.utils import check_srm

SEED = 20260810
ALPHAS = (0.05, 0.05, 0.05, 0.1, 0.01, 0.2)
TUNINGS = (5000.0, 5000.0, 100.0, 1000.0, 20000.0, 1e5, 1e6)

Arm = tuple[int, float, float]


def statistic(kind: str, arm: Arm) -> ProportionStatistic | SampleMeanStatistic:
    """The gbstats statistic of one arm: binomial for a conversion, count for a mean."""
    n, total, total_squares = arm
    if kind == "conversion":
        return ProportionStatistic(n=n, sum=total)
    return SampleMeanStatistic(n=n, sum=total, sum_squares=total_squares)


def lift(kind: str, control: Arm, treatment: Arm, difference: str, alpha: float, tuning: float):
    """gbstats' fixed-horizon and sequential answers for one difference type."""
    fixed_test = TwoSidedTTest(
        statistic(kind, control),
        statistic(kind, treatment),
        FrequentistConfig(difference_type=difference, alpha=alpha),
    )
    fixed = fixed_test.compute_result()
    sequential = SequentialTwoSidedTTest(
        statistic(kind, control),
        statistic(kind, treatment),
        SequentialConfig(
            difference_type=difference, alpha=alpha, sequential_tuning_parameter=tuning
        ),
    ).compute_result()
    if sequential.error_message != fixed.error_message:
        raise RuntimeError("gbstats' fixed and sequential tests disagree on availability")
    figures = {
        "estimate": float(fixed.expected),
        "stddev": float(fixed.uplift.stddev),
        "ci": [float(bound) for bound in fixed.ci],
        "p_value": float(fixed.p_value),
        "sequential_estimate": float(sequential.expected),
        "sequential_ci": [float(bound) for bound in sequential.ci],
        "sequential_p_value": float(sequential.p_value),
    }
    dof = None if fixed.error_message else float(fixed_test.dof)
    return figures, fixed.error_message, dof


def comparison(kind: str, control: Arm, treatment: Arm, alpha: float, tuning: float):
    """Everything gbstats says about one treatment against the control."""
    a, b = statistic(kind, control), statistic(kind, treatment)
    absolute, error, dof = lift(kind, control, treatment, "absolute", alpha, tuning)
    relative, relative_error, _ = lift(kind, control, treatment, "relative", alpha, tuning)
    if relative_error != error:
        raise RuntimeError("gbstats' absolute and relative tests disagree on availability")
    return {
        "control_mean": float(a.mean),
        "control_variance": float(a.variance),
        "treatment_mean": float(b.mean),
        "treatment_variance": float(b.variance),
        "dof": dof,
        "error": error,
        "absolute": absolute,
        "relative": relative,
    }


def case(description: str, kind: str, arms: list[Arm], alpha=0.05, tuning=5000.0):
    """A vector: arms (control first) and gbstats' comparison of each other arm with it."""
    arms = [(int(n), float(total), float(squares)) for n, total, squares in arms]
    return {
        "description": description,
        "kind": kind,
        "alpha": alpha,
        "sequential_tuning": tuning,
        "arms": [list(arm) for arm in arms],
        "expected": [comparison(kind, arms[0], arm, alpha, tuning) for arm in arms[1:]],
    }


def conversion_arm(rng: np.random.Generator, n: int, rate: float) -> Arm:
    """A conversion arm with binomially drawn conversions (Σx² = Σx for 0/1 values)."""
    converted = int(rng.binomial(n, rate))
    return (n, converted, converted)


def mean_arm_from_moments(n: int, mean: float, sd: float) -> Arm:
    """A mean arm with the given sample mean and sample standard deviation (n > 1)."""
    total = n * mean
    return (n, total, (n - 1) * sd * sd + total * total / n)


def mean_arm_from_values(values: np.ndarray) -> Arm:
    """A mean arm summed from real per-subject values, as the stream aggregates them."""
    return (len(values), float(values.sum()), float((values * values).sum()))


def conversion_cases(rng: np.random.Generator) -> list[dict[str, Any]]:
    """Rates anywhere in (0, 1), near 0 and 1, small and large n, 2-4 variants."""
    cases = []
    for index in range(90):
        variants = int(rng.integers(2, 5))
        n_scale = int(rng.choice([5, 30, 300, 5_000, 100_000, 3_000_000]))
        regime = index % 4
        base = (
            rng.uniform(0.02, 0.98),
            rng.uniform(1e-4, 5e-3),
            1 - rng.uniform(1e-4, 5e-3),
            rng.uniform(0.3, 0.7),
        )[regime]
        arms = []
        for _ in range(variants):
            n = int(rng.integers(max(2, n_scale // 2), n_scale * 2))
            rate = float(np.clip(base * rng.uniform(0.8, 1.2), 1e-6, 1 - 1e-6))
            arms.append(conversion_arm(rng, n, rate))
        cases.append(
            case(
                f"conversion {index}: {variants} variants, n ~ {n_scale}, base rate {base:.4g}",
                "conversion",
                arms,
                alpha=float(rng.choice(ALPHAS)),
                tuning=float(rng.choice(TUNINGS)),
            )
        )
    return cases


def mean_cases(rng: np.random.Generator) -> list[dict[str, Any]]:
    """Means with equal and unequal variances, negative lifts and means, 2-4 variants."""
    cases = []
    for index in range(90):
        variants = int(rng.integers(2, 5))
        n_scale = int(rng.choice([3, 20, 500, 20_000, 1_000_000]))
        mean = float(rng.choice([rng.uniform(0.5, 200), rng.uniform(-50, -0.5), 1e-3]))
        sd = float(rng.uniform(0.1, 3) * max(abs(mean), 1))
        arms = []
        for _ in range(variants):
            n = int(rng.integers(max(2, n_scale // 2), n_scale * 2))
            arm_mean = mean * float(rng.uniform(0.9, 1.1))
            arm_sd = sd * float(rng.choice([1.0, rng.uniform(0.2, 5.0)]))
            arms.append(mean_arm_from_moments(n, arm_mean, arm_sd))
        cases.append(
            case(
                f"mean {index}: {variants} variants, n ~ {n_scale}, mean {mean:.4g}, sd {sd:.4g}",
                "mean",
                arms,
                alpha=float(rng.choice(ALPHAS)),
                tuning=float(rng.choice(TUNINGS)),
            )
        )
    for index in range(40):
        variants = int(rng.integers(2, 5))
        n = int(rng.integers(2, 400))
        arms = [
            mean_arm_from_values(rng.poisson(rng.uniform(0.2, 6), size=n).astype(float))
            for _ in range(variants)
        ]
        cases.append(case(f"summed counts {index}: {variants} variants, n ~ {n}", "mean", arms))
    return cases


def sequential_cases(rng: np.random.Generator) -> list[dict[str, Any]]:
    """One experiment seen through several tuning parameters and alphas."""
    cases = []
    arms = [conversion_arm(rng, 8_000, 0.10), conversion_arm(rng, 8_000, 0.11)]
    means = [mean_arm_from_moments(3_000, 12.0, 9.0), mean_arm_from_moments(2_900, 12.6, 11.0)]
    for tuning in (10.0, 100.0, 1000.0, 5000.0, 1e4, 1e5, 1e7):
        for alpha in (0.05, 0.01, 0.1):
            cases.append(
                case(f"sequential tuning {tuning} alpha {alpha}", "conversion", arms, alpha, tuning)
            )
            cases.append(
                case(
                    f"sequential tuning {tuning} alpha {alpha} (mean)", "mean", means, alpha, tuning
                )
            )
    return cases


def edge_cases() -> list[dict[str, Any]]:
    """gbstats' guards and the shapes around them."""
    return [
        case("equal rates", "conversion", [(1000, 100, 100), (1000, 100, 100)]),
        case("equal means", "mean", [mean_arm_from_moments(500, 3, 2)] * 2),
        case("negative lift, conversion", "conversion", [(5000, 600, 600), (5000, 450, 450)]),
        case("negative lift, mean", "mean", [(400, 2000, 40000), (400, 1500, 30000)]),
        case("huge lift, tiny p", "conversion", [(100000, 1000, 1000), (100000, 5000, 5000)]),
        case("control rate 0", "conversion", [(100, 0, 0), (100, 5, 5)]),
        case("control rate 1", "conversion", [(100, 100, 100), (100, 95, 95)]),
        case("treatment rate 0", "conversion", [(100, 5, 5), (100, 0, 0)]),
        case("control mean 0 with variance", "mean", [(4, 0, 8), (4, 4, 10)]),
        case("negative control mean", "mean", [(50, -100, 400), (50, -80, 300)]),
        case("constant metric", "mean", [(10, 30, 90), (10, 40, 200)]),
        case("n = 1 in treatment", "mean", [(10, 30, 100), (1, 3, 9)]),
        case("n = 1 in control", "mean", [(1, 3, 9), (10, 30, 100)]),
        case("n = 0 in treatment", "mean", [(10, 30, 100), (0, 0, 0)]),
        case("n = 0 in control", "conversion", [(0, 0, 0), (10, 3, 3)]),
        case("n = 2 each", "mean", [(2, 3, 5), (2, 5, 13)]),
        case("n = 2 conversions", "conversion", [(2, 1, 1), (2, 1, 1)]),
        case(
            "one arm of four unavailable",
            "conversion",
            [(300, 30, 30), (300, 45, 45), (300, 0, 0), (300, 20, 20)],
        ),
        case("treatment mean 0", "mean", [(20, 40, 100), (20, 0, 12)]),
    ]


def sample_ratio_cases(rng: np.random.Generator) -> list[dict[str, Any]]:
    """check_srm with matching and mismatching splits, 2-4 variants, zero weights, no users."""
    fixed = [
        ("no subjects", [0, 0], [0.5, 0.5]),
        ("exact split", [5000, 5000], [0.5, 0.5]),
        ("classic mismatch", [5000, 5300], [0.5, 0.5]),
        ("uneven weights matched", [2000, 8000], [0.2, 0.8]),
        ("uneven weights reversed", [8000, 2000], [0.2, 0.8]),
        ("weights not normalised", [3300, 3400, 3300], [1, 1, 1]),
        ("a zero weight", [500, 480, 20], [0.5, 0.5, 0.0]),
        ("four variants slight drift", [2500, 2520, 2480, 2590], [0.25] * 4),
        ("tiny counts", [1, 0], [0.5, 0.5]),
        ("one variant empty", [1000, 0], [0.5, 0.5]),
    ]
    cases = [
        {"description": d, "subjects": s, "weights": [float(w) for w in ws]} for d, s, ws in fixed
    ]
    for index in range(60):
        variants = int(rng.integers(2, 5))
        weights = rng.dirichlet(np.ones(variants) * 3)
        total = int(rng.choice([50, 1000, 20_000, 1_000_000]))
        skew = weights * (1 + rng.normal(0, [0.0, 0.002, 0.01, 0.05][index % 4], variants))
        subjects = rng.multinomial(total, skew / skew.sum()).tolist()
        cases.append(
            {
                "description": f"random split {index}: {variants} variants, {total} subjects",
                "subjects": [int(count) for count in subjects],
                "weights": [float(w) for w in weights],
            }
        )
    for entry in cases:
        entry["p_value"] = float(check_srm(entry["subjects"], entry["weights"]))
    return cases


def main() -> None:
    rng = np.random.default_rng(SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gbstats' np.exp may overflow: its answer is kept
        comparisons = edge_cases() + conversion_cases(rng) + mean_cases(rng) + sequential_cases(rng)
        sample_ratio = sample_ratio_cases(rng)
    document = {
        "generator": "scripts/gbstats_vectors.py",
        "oracle": {
            package: importlib.metadata.version(package)
            for package in ("gbstats", "scipy", "numpy", "pandas")
        },
        "comparisons": comparisons,
        "sample_ratio": sample_ratio,
    }
    json.dump(document, sys.stdout, indent=1, allow_nan=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
