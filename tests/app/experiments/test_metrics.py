"""Metric declarations in flag metadata: what parses, what is refused (by path), and which
metrics an environment's experiment flags declare together."""

from __future__ import annotations

from typing import Any

import pytest

from app.engine.problems import Problem
from app.experiments.metrics import Metric, declared_metrics, flag_metrics, parse_metric, problems

VARIANTS = {"control": "a", "treatment": "b"}


@pytest.mark.parametrize(
    ("declaration", "metric"),
    [
        ("conversion", Metric("m", "conversion")),
        ("mean", Metric("m", "mean")),
        ("  mean  ", Metric("m", "mean")),
        ("mean guardrail increase", Metric("m", "mean", "increase")),
        ("conversion guardrail decrease", Metric("m", "conversion", "decrease")),
    ],
)
def test_a_declaration_parses_to_its_metric(declaration: str, metric: Metric) -> None:
    assert parse_metric("m", declaration) == metric


@pytest.mark.parametrize(
    "declaration",
    [
        "",
        "sum",
        "Conversion",
        "mean guardrail",
        "mean guardrail up",
        "mean increase",
        "guardrail increase",
        "mean guardrail increase now",
        1,
        True,
        None,
    ],
)
def test_a_declaration_that_does_not_parse_says_the_grammar(declaration: Any) -> None:
    message = parse_metric("m", declaration)
    assert isinstance(message, str) and "'conversion' or 'mean'" in message


def test_a_metric_key_follows_the_key_rule() -> None:
    assert isinstance(parse_metric("", "mean"), str)
    assert isinstance(parse_metric("has space", "mean"), str)
    assert parse_metric("latency.p99_ms", "mean") == Metric("latency.p99_ms", "mean")


def test_problems_name_the_metadata_path_of_each_bad_declaration() -> None:
    definition = {
        "variants": VARIANTS,
        "metadata": {
            "experiment": True,
            "metric.purchase": "conversion",
            "metric.revenue": "sum",
            "metric.": "mean",
            "metric.latency": 3,
            "team": "web",
        },
    }
    assert [p.path for p in problems(definition)] == [
        '$.metadata["metric."]',
        '$.metadata["metric.latency"]',
        '$.metadata["metric.revenue"]',
    ]


def test_the_control_of_an_experiment_must_be_one_of_its_variants() -> None:
    good = {"variants": VARIANTS, "metadata": {"experiment": True, "control": "treatment"}}
    assert problems(good) == []
    for control in ("nope", 1):
        bad = {"variants": VARIANTS, "metadata": {"experiment": True, "control": control}}
        assert [p.path for p in problems(bad)] == ["$.metadata.control"]
    other = {"variants": VARIANTS, "metadata": {"control": "team-x"}}  # not an experiment
    assert problems(other) == []


def test_a_flag_without_metadata_has_no_problems() -> None:
    assert problems({"variants": VARIANTS}) == []
    assert problems({"variants": VARIANTS, "metadata": "x"}) == []
    assert isinstance(problems({"metadata": {"metric.x": "?"}})[0], Problem)


def test_flag_metrics_reads_the_declarations_that_parse() -> None:
    metadata = {"metric.a": "conversion", "metric.b": "mean guardrail decrease", "metric.c": "x"}
    assert flag_metrics(metadata) == {
        "a": Metric("a", "conversion"),
        "b": Metric("b", "mean", "decrease"),
    }


def test_declared_metrics_are_those_of_experiment_flags_merged() -> None:
    metadatas = [
        {"experiment": True, "metric.buy": "conversion", "metric.spend": "conversion"},
        {"experiment": True, "metric.spend": "mean guardrail increase"},
        {"experiment": True, "metric.buy": "conversion"},
        {"metric.ignored": "mean"},  # not an experiment flag
        {"experiment": "yes", "metric.ignored": "mean"},
    ]
    assert declared_metrics(metadatas) == {
        "buy": Metric("buy", "conversion"),
        "spend": Metric("spend", "mean"),  # declared both ways: a mean accepts a conversion's 1
    }
