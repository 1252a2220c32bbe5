"""Metric declarations: which metrics an experiment measures, read from its flag's metadata.

flagd allows only strings, numbers and booleans as metadata values, so an experiment flag
declares each metric as one metadata entry whose key is `metric.<metric key>` and whose value
is a string: the kind, then optionally `guardrail` and the harmful direction.

    "metadata": {
      "experiment": true,
      "control": "off",                              (optional: the control variant)
      "metric.purchase": "conversion",               (value 1 per event; subject: 1 if any)
      "metric.revenue": "mean",                      (subject: the sum of its values)
      "metric.latency_ms": "mean guardrail increase" (harmful when it goes up)
    }

Pure: the control plane refuses a flag whose declarations do not parse (`problems`), the
metric-events intake accepts events of metrics any experiment flag declares
(`declared_metrics`), and the analytics read a flag's own (`flag_metrics`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, get_args

from app.engine.problems import Problem, json_path
from app.infra.keys import KEY_PATTERN, valid_key

__all__ = [
    "CONTROL_KEY",
    "EXPERIMENT_KEY",
    "EXPERIMENT_NAME_KEY",
    "METRIC_PREFIX",
    "Harm",
    "Metric",
    "MetricKind",
    "declared_metrics",
    "flag_metrics",
    "parse_metric",
    "problems",
]

MetricKind = Literal["conversion", "mean"]
Harm = Literal["increase", "decrease"]

EXPERIMENT_KEY: Final = "experiment"  # metadata: true marks an experiment flag (exposures)
EXPERIMENT_NAME_KEY: Final = "experimentKey"  # metadata: the experiment's name (default: flag key)
CONTROL_KEY: Final = "control"  # metadata of an experiment flag: the control variant
METRIC_PREFIX: Final = "metric."  # metadata: "metric.<key>": "<kind> [guardrail <harm>]"
GUARDRAIL: Final = "guardrail"
KINDS: Final[tuple[str, ...]] = get_args(MetricKind)
HARMS: Final[tuple[str, ...]] = get_args(Harm)
GRAMMAR: Final = (
    f"must be {' or '.join(repr(k) for k in KINDS)}, optionally followed by "
    f"'{GUARDRAIL} increase' or '{GUARDRAIL} decrease' (the harmful direction)"
)


@dataclass(frozen=True, slots=True)
class Metric:
    """A declared metric: its key, how a subject's value is formed, and for a guardrail the
    direction of change that counts as harm."""

    key: str
    kind: MetricKind
    guardrail_harmful: Harm | None = None


def parse_metric(key: str, declaration: object) -> Metric | str:
    """The metric `declaration` declares under `key`, or what is wrong with it."""
    if not valid_key(key):
        return f"the metric key {key!r} must match {KEY_PATTERN.pattern}"
    if not isinstance(declaration, str):
        return GRAMMAR
    words = declaration.split()
    kind = words[0] if words else ""
    if kind == "conversion" and len(words) == 1:
        return Metric(key, "conversion")
    if kind == "mean" and len(words) == 1:
        return Metric(key, "mean")
    if kind in KINDS and len(words) == 3 and words[1] == GUARDRAIL and words[2] in HARMS:
        harm: Harm = "increase" if words[2] == "increase" else "decrease"
        return Metric(key, "conversion" if kind == "conversion" else "mean", harm)
    return GRAMMAR


def flag_metrics(metadata: Mapping[str, object]) -> dict[str, Metric]:
    """The metrics a flag's metadata declares, by key (declarations that do not parse are
    left out: the control plane refused them, so only a flag older than the check has any)."""
    found = {}
    for name, declaration in metadata.items():
        if name.startswith(METRIC_PREFIX):
            metric = parse_metric(name.removeprefix(METRIC_PREFIX), declaration)
            if isinstance(metric, Metric):
                found[metric.key] = metric
    return found


def declared_metrics(metadatas: Iterable[Mapping[str, object]]) -> dict[str, Metric]:
    """Every metric the experiment flags with these metadata declare, by key.

    Two experiments may declare one metric with different kinds; then it is a `mean` here
    (a conversion's value 1 is also a valid mean value), so the intake accepts an event
    valid for any of them and each experiment's analysis reads it by its own declaration.
    """
    merged: dict[str, Metric] = {}
    for metadata in metadatas:
        if metadata.get(EXPERIMENT_KEY) is not True:
            continue
        for key, metric in flag_metrics(metadata).items():
            known = merged.get(key)
            if known is None or (known.kind != metric.kind and known.kind == "conversion"):
                merged[key] = Metric(key, metric.kind)
    return merged


def problems(definition: Mapping[str, object]) -> list[Problem]:
    """What is wrong with a flag definition's metric declarations and control variant.

    Every `metric.` entry is checked (the prefix is reserved); `control` only on an
    experiment flag, where it must name one of the flag's variants. Sorted by path.
    """
    metadata = definition.get("metadata")
    if not isinstance(metadata, Mapping):
        return []
    found = []
    for name, declaration in metadata.items():
        if isinstance(name, str) and name.startswith(METRIC_PREFIX):
            metric = parse_metric(name.removeprefix(METRIC_PREFIX), declaration)
            if isinstance(metric, str):
                found.append(Problem(json_path(("metadata", name)), metric))
    if metadata.get(EXPERIMENT_KEY) is True and CONTROL_KEY in metadata:
        control, variants = metadata[CONTROL_KEY], definition.get("variants")
        if (
            not isinstance(control, str)
            or not isinstance(variants, Mapping)
            or (control not in variants)
        ):
            message = "must name one of the flag's variants (the control of the experiment)"
            found.append(Problem(json_path(("metadata", CONTROL_KEY)), message))
    return sorted(found, key=lambda p: (p.path, p.message))  # as flag_problems orders them
