"""Experiment health on /metrics: the figures of the results view, with bounded labels."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from app.experiments import health
from app.experiments.design import ExperimentDesign
from app.experiments.health import ExperimentHealth
from app.experiments.partials import Progress, encode_partial, encode_progress
from app.experiments.report import report
from app.experiments.stats_feed import ExperimentStatsFeed
from app.infra.metrics import Metrics
from app.infra.records import Rejection
from tests.app.experiments.test_report import design, partial, two_partitions
from tests.app.experiments.test_stats_feed import settings_for


async def _ignore(rejection: Rejection, raw: bytes | None, partition: int, offset: int) -> None:
    return None


def fed(*records: bytes) -> ExperimentStatsFeed:
    """A feed that has read `records` (its record path, no broker needed)."""
    feed = ExperimentStatsFeed(settings_for("127.0.0.1:9"), Metrics(CollectorRegistry()), _ignore)
    for offset, record in enumerate(records):
        asyncio.run(feed.take(record, 0, offset))
    return feed


def scrape(feed: ExperimentStatsFeed, designs: dict[str, ExperimentDesign]) -> str:
    registry = CollectorRegistry()
    registry.register(
        ExperimentHealth(feed, lambda env, exp: designs.get(exp), clock=lambda: 1_795_600_030.0)
    )
    return generate_latest(registry).decode()


def test_each_figure_is_the_one_of_the_results_view() -> None:
    partials = two_partitions()
    progress = Progress(3, {"exposures": 4}, 2, 1_795_600_020.0)
    feed = fed(*(encode_partial(p)[1] for p in partials), encode_progress(progress)[1])
    text = scrape(feed, {"exp": design()})
    body = report(
        "development",
        "exp",
        design(),
        partials,
        {3: progress},
        now=0.0,
        partitions=8,
        window_s=60,
        sequential_tuning=5000.0,
    )
    labels = 'environment="development",experiment="exp"'
    for variant in body["variants"]:
        assert (
            f'flagstream_experiment_subjects{{{labels},variant="{variant["variant"]}"}} '
            f"{float(variant['subjects'])}\n" in text
        )
    assert f"flagstream_experiment_crossovers{{{labels}}} {float(body['crossovers'])}\n" in text
    assert f"flagstream_experiment_srm_p_value{{{labels}}} {body['srm']['p_value']!r}\n" in text
    # Only source partition 3 has reported, 10 s before the scrape.
    assert f"flagstream_experiment_aggregation_lag_seconds{{{labels}}} 10.0\n" in text
    assert 'flagstream_experiment_source_behind_records{partition="3"} 2.0\n' in text
    assert "flagstream_experiments_unexported 0.0\n" in text


def test_no_split_no_srm_series() -> None:
    text = scrape(fed(encode_partial(partial(0, two_partitions()[0].totals.variants))[1]), {})
    assert "flagstream_experiment_subjects{" in text
    assert "flagstream_experiment_srm_p_value{" not in text


def test_labels_are_bounded_the_rest_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "MAX_EXPORTED", 2)
    monkeypatch.setattr(health, "MAX_EXPORTED_ENVIRONMENTS", 2)
    variants = two_partitions()[0].totals.variants
    names = [("e1", "x1"), ("e1", "x2"), ("e1", "x3"), ("e2", "x1"), ("e3", "x1"), ("e3", "x2")]
    feed = fed(
        *(encode_partial(partial(0, variants, environment=e, experiment=x))[1] for e, x in names)
    )
    text = scrape(feed, {})
    exported = {
        line.split("{")[1].split(",variant")[0]
        for line in text.splitlines()
        if line.startswith("flagstream_experiment_subjects{")
    }
    assert exported == {
        'environment="e1",experiment="x1"',
        'environment="e1",experiment="x2"',
        'environment="e2",experiment="x1"',
    }
    assert "flagstream_experiments_unexported 3.0\n" in text  # e1/x3, e3/x1, e3/x2
