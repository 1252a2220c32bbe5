"""Guarded rollouts: when a guardrail metric shows harm, and what rolling the experiment back is.

A guardrail is a metric the flag declares with a harmful direction (`"metric.latency_ms":
"mean guardrail increase"`, app/experiments/metrics.py). A treatment *breaches* it when the
always-valid (sequential) interval of its absolute lift over the control lies entirely on the
harmful side of 0: increase, the interval's low end > 0; decrease, its high end < 0. That
interval stays valid however often it is looked at (Waudby-Smith et al., the one gbstats'
`SequentialTwoSidedTTest` computes), which is what lets every worker check it each time a
partial changes. An interval touching 0 is no evidence, nor is a comparison the statistics
cannot make (`Comparison.unavailable`: too few subjects, zero variance, a control mean of 0).

The rollback, as LaunchDarkly's guarded rollouts do it, returns everyone to the control:
a new version of the flag with
- the same variants, state and metadata (still an experiment: exposures keep counting, the
  results keep the treatment's subjects so far, and the control stays the control),
- `defaultVariant` the control and `targeting` removed, so every evaluation gets the control,
- the metadata entry `guardrailRollback` saying which version was rolled back and why.
It is a `put` with `expected_version` the version judged, under the change id
`guardrail:<env>:<flag>:<version>:<metric>`: every worker that sees the breach sends the same
request, and the change-id index applies it once (app/control/changes.py `decide`). The
definition holds no figures, so two workers that read slightly different partials still send
the same request; the figures go in the change's actor (`actor`), which history and the
change stream show beside the definition. A flag already serving only its control (or
disabled) has nothing to roll back.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from app.engine import CompiledFlag, JsonObject
from app.experiments.attribution import Totals
from app.experiments.design import ExperimentDesign
from app.experiments.metrics import Harm
from app.experiments.results import ExperimentResults, results
from app.experiments.stats import DEFAULT_ALPHA, DEFAULT_SEQUENTIAL_TUNING, Interval

__all__ = [
    "ACTOR",
    "ROLLBACK_NOTE_KEY",
    "Breach",
    "actor",
    "breaches",
    "check",
    "guarded",
    "rollback_change_id",
    "rollback_definition",
    "serves_only_control",
]

ACTOR: Final = "guardrail"
ROLLBACK_NOTE_KEY: Final = "guardrailRollback"  # metadata of the rolled-back version
CHANGE_ID_PREFIX: Final = "guardrail:"
MAX_ACTOR: Final = 512  # characters: a metric or variant name may be long, history is not
# app.control.changes.MAX_CHANGE_ID, which this layer may not import (a test ties them).
MAX_CHANGE_ID: Final = 200


@dataclass(frozen=True, slots=True)
class Breach:
    """A treatment harming a guardrail metric, with the figures that show it."""

    metric: str
    variant: str  # the treatment
    control: str
    harm: Harm  # the harmful direction the metric declares
    lift: float  # absolute: treatment mean - control mean
    interval: Interval  # the always-valid interval of `lift`
    relative_lift: float  # (treatment - control) / control
    control_n: int
    treatment_n: int


def guarded(design: ExperimentDesign) -> dict[str, Harm]:
    """The harmful direction of each guardrail metric the design declares, by metric."""
    return {
        key: metric.guardrail_harmful
        for key, metric in design.metrics.items()
        if metric.guardrail_harmful is not None
    }


def breaches(design: ExperimentDesign, results: ExperimentResults) -> list[Breach]:
    """Every (guardrail metric, treatment) whose always-valid interval shows harm, in the
    results' order (metrics by key, treatments in variant order)."""
    harms = guarded(design)
    treatments = [v.variant for v in results.variants if v.variant != results.control]
    found = []
    for metric in results.metrics:
        harm = harms.get(metric.metric)
        if harm is None:
            continue
        for variant, comparison in zip(treatments, metric.comparisons, strict=True):
            interval = comparison.absolute.sequential_ci
            if comparison.unavailable is not None or not _harmful(interval, harm):
                continue
            found.append(
                Breach(
                    metric=metric.metric,
                    variant=variant,
                    control=results.control,
                    harm=harm,
                    lift=comparison.absolute.estimate,
                    interval=interval,
                    relative_lift=comparison.relative.estimate,
                    control_n=comparison.control.n,
                    treatment_n=comparison.treatment.n,
                )
            )
    return found


def check(
    design: ExperimentDesign,
    totals: Totals,
    *,
    alpha: float = DEFAULT_ALPHA,
    sequential_tuning: float = DEFAULT_SEQUENTIAL_TUNING,
) -> list[Breach]:
    """The breaches in an experiment's merged totals: its guardrail metrics only are compared
    (the others cannot breach), against the design's control."""
    harms = guarded(design)
    if not harms or design.control not in design.variants:
        return []
    kinds = {metric: kind for metric, kind in design.kinds.items() if metric in harms}
    found = results(
        totals,
        design.variants,
        design.control,
        kinds,
        alpha=alpha,
        sequential_tuning=sequential_tuning,
    )
    return breaches(design, found)


def _harmful(interval: Interval, harm: Harm) -> bool:
    """The interval excludes 0 on the harmful side (touching 0 is not enough)."""
    return interval.low > 0 if harm == "increase" else interval.high < 0


def serves_only_control(flag: CompiledFlag, design: ExperimentDesign) -> bool:
    """True when the flag cannot serve a treatment: disabled, or no targeting and the control
    as its default (what a rollback leaves), so there is nothing to roll back."""
    if flag.state != "ENABLED":
        return True
    return not flag.targeting and flag.default_variant == design.control


def rollback_definition(
    definition: JsonObject, design: ExperimentDesign, breach: Breach
) -> JsonObject:
    """The next version of the flag: everyone gets the control, the experiment stays declared,
    the metadata says which version was rolled back and for which guardrail."""
    rolled: JsonObject = {key: value for key, value in definition.items() if key != "targeting"}
    rolled["defaultVariant"] = design.control
    metadata = definition.get("metadata")
    note = (
        f"version {design.version} rolled back to {design.control!r}: guardrail "
        f"{breach.metric!r} moved in its harmful direction ({breach.harm}) in {breach.variant!r}"
    )
    rolled["metadata"] = {
        **(metadata if isinstance(metadata, dict) else {}),
        ROLLBACK_NOTE_KEY: note,
    }
    return rolled


def rollback_change_id(environment: str, flag: str, version: int, metric: str) -> str:
    """`guardrail:<env>:<flag>:<version>:<metric>`, or, past the change-id limit
    (app.control.changes.MAX_CHANGE_ID, 200), `guardrail:` and that id's SHA-256: the same
    for every worker either way, so the change-id index applies it once."""
    full = f"{CHANGE_ID_PREFIX}{environment}:{flag}:{version}:{metric}"
    if len(full) <= MAX_CHANGE_ID:
        return full
    return CHANGE_ID_PREFIX + hashlib.sha256(full.encode()).hexdigest()


def actor(breach: Breach, confidence: float) -> str:
    """Who made the rollback and why, with the figures: the change's `actor`, shown in history
    and the change stream. `confidence` is the interval's level, e.g. 0.95."""
    text = (
        f"{ACTOR}: {breach.metric} {breach.harm} in {breach.variant} vs {breach.control}: "
        f"lift {breach.lift:+.6g} ({breach.relative_lift:+.2%}), always-valid "
        f"{confidence:.0%} interval [{breach.interval.low:+.6g}, {breach.interval.high:+.6g}], "
        f"n {breach.treatment_n} vs {breach.control_n}"
    )
    return text[:MAX_ACTOR]
