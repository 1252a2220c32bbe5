"""Evaluation counts stay exact when a hot path counts in place (`Tallies`): a scrape after N
evaluations shows N, however the tallies were kept, replaced or emptied meanwhile."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from app.engine import Reason, Resolution
from app.evaluation.stats import EvaluationStats, Tallies

ON = Resolution(True, "on", Reason.TARGETING_MATCH)
OFF = Resolution(False, "off", Reason.DEFAULT)


def scraped(registry: CollectorRegistry, environment: str, flag: str, variant: str) -> float:
    labels = {"path": "ofrep", "environment": environment, "flag": flag, "variant": variant}
    reason = {"on": "TARGETING_MATCH", "off": "DEFAULT"}[variant]
    value = registry.get_sample_value("flagstream_evaluations_total", {**labels, "reason": reason})
    return value or 0.0


def registered() -> tuple[CollectorRegistry, EvaluationStats]:
    registry, stats = CollectorRegistry(), EvaluationStats()
    registry.register(stats)
    return registry, stats


def tallied(tallies: Tallies, environment: str, flag: str, resolution: Resolution, n: int) -> None:
    """Count `n` evaluations as `Evaluator.answer` does: find the tally or keep a new one."""
    for _ in range(n):
        tally = tallies.find(environment, flag, resolution)
        if tally is None:
            tally = tallies.keep(environment, flag, resolution, b"answer")
        tally.count += 1


def test_a_scrape_shows_every_tallied_evaluation_once() -> None:
    registry, stats = registered()
    tallies = Tallies(stats, "ofrep")
    tallied(tallies, "dev", "f", ON, 7)
    assert scraped(registry, "dev", "f", "on") == 7
    tallied(tallies, "dev", "f", ON, 3)
    stats.count("ofrep", "dev", "f", "on", Reason.TARGETING_MATCH)  # the other paths' count
    assert scraped(registry, "dev", "f", "on") == 11
    assert scraped(registry, "dev", "f", "on") == 11  # a scrape counts nothing twice


def test_a_full_cache_is_counted_before_it_is_emptied() -> None:
    registry, stats = registered()
    tallies = Tallies(stats, "ofrep", size=2)
    tallied(tallies, "dev", "a", ON, 2)
    tallied(tallies, "dev", "a", OFF, 3)
    tallied(tallies, "dev", "b", Resolution(True, "on", Reason.TARGETING_MATCH), 4)  # empties
    assert len(tallies.by_id) == 1
    assert (scraped(registry, "dev", "a", "on"), scraped(registry, "dev", "a", "off")) == (2, 3)
    assert scraped(registry, "dev", "b", "on") == 4


def test_one_outcome_object_under_two_flags_or_environments_counts_for_each() -> None:
    registry, stats = registered()
    tallies = Tallies(stats, "ofrep")
    for environment, flag in (("dev", "a"), ("prod", "a"), ("dev", "b"), ("dev", "a")):
        tallied(tallies, environment, flag, ON, 5)
    assert scraped(registry, "dev", "a", "on") == 10
    assert scraped(registry, "prod", "a", "on") == 5
    assert scraped(registry, "dev", "b", "on") == 5
