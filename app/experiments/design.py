"""What an experiment flag's definition says about its analysis: arms, control, split, metrics.

Read from one compiled flag version, so a result is always analysed against the version that
was evaluated: its variants in the order of its first `fractional` split (the arms), the
control (metadata `control`, else the split's first variant), the split's weights (what the
sample-ratio check expects) and the declared metrics (app/experiments/metrics.py). Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.engine import CompiledFlag, fractional_split
from app.experiments.metrics import (
    CONTROL_KEY,
    EXPERIMENT_KEY,
    EXPERIMENT_NAME_KEY,
    Metric,
    flag_metrics,
)
from app.experiments.stats import MetricKind

__all__ = ["ExperimentDesign", "design_of", "experiment_name"]


@dataclass(frozen=True, slots=True)
class ExperimentDesign:
    experiment: str
    flag: str
    version: int
    variants: tuple[str, ...]  # the split's variants first, in its order, then the others
    control: str
    weights: tuple[float, ...] | None  # per variant, in `variants` order; None: no split
    metrics: dict[str, Metric]

    @property
    def kinds(self) -> dict[str, MetricKind]:
        """Each metric's kind, as the fold and the statistics take it."""
        return {key: MetricKind(metric.kind) for key, metric in self.metrics.items()}


def experiment_name(flag: CompiledFlag) -> str | None:
    """The experiment a flag runs (metadata `experimentKey`, else the flag key), or None."""
    if flag.metadata.get(EXPERIMENT_KEY) is not True:
        return None
    name = flag.metadata.get(EXPERIMENT_NAME_KEY)
    return name if isinstance(name, str) and name else flag.key


def design_of(flag: CompiledFlag, version: int) -> ExperimentDesign | None:
    """The analysis design of an experiment flag version; None when it runs no experiment."""
    name = experiment_name(flag)
    if name is None:
        return None
    split = fractional_split(flag.targeting, flag.fractional_version)
    arms: list[str] = []
    weights: list[float] | None = None
    if split is not None and all(isinstance(v, str) for v in split[0]):
        by_variant: dict[str, float] = {}
        for variant, weight in zip(split[0], split[1], strict=True):
            by_variant[variant] = by_variant.get(variant, 0) + weight  # a variant named twice
        arms = list(by_variant)
        weights = [float(weight) for weight in by_variant.values()]
    others = [variant for variant in flag.variants if variant not in arms]
    variants = tuple(arms + others)
    if weights is not None:
        weights += [0.0] * len(others)
    control = flag.metadata.get(CONTROL_KEY)
    if not isinstance(control, str) or control not in variants:
        control = arms[0] if arms else (flag.default_variant or (variants[0] if variants else ""))
    return ExperimentDesign(
        name,
        flag.key,
        version,
        variants,
        control,
        None if weights is None else tuple(weights),
        flag_metrics(flag.metadata),
    )
