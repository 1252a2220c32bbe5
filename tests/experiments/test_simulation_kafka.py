"""Issue 10 item 8 over Kafka: the simulated experiment (20,000 subjects, 3 variants, a known
lift, duplicates, resends and late events) produced to `exposures` and `metric-events`, folded
by a real worker, read from its results view: every figure equals the offline truth (scipy)
and gbstats' answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.control.client import AdminClient
from app.infra.topics import Topics
from tests.conftest import READ_TOKEN, Worker, own_broker, produce, wait_until
from tests.experiments.offline import (
    differences,
    gbstats_figures,
    report_differences,
    report_figures,
    truth,
)
from tests.experiments.simulation import EXPOSURES, METRIC_EVENTS, scenario

broker = pytest.fixture(own_broker, name="broker")
GBSTATS = Path(__file__).with_name("simulation_gbstats.json")


def test_the_results_view_of_the_simulation_equals_scipy_and_gbstats(
    broker: str, cluster: list[Worker], tmp_path: Path
) -> None:
    sim = scenario(environment="sim")
    expected = truth(sim)
    worker = Worker(
        broker, tmp_path / "data", "simulation", **sim.settings, FLAGSTREAM_STATS_PUBLISH_MS="200"
    ).start()
    cluster.append(worker)
    worker.admin().put(sim.environment, sim.flag, sim.definition)
    topics = Topics.named("simulation")  # the worker's app id
    for source, topic in ((EXPOSURES, topics.exposures), (METRIC_EVENTS, topics.metric_events)):
        produce(broker, topic, sim.records[source])
    url = f"/api/v1/environments/{sim.environment}/experiments/{sim.experiment}/results"
    last: dict[str, Any] = {}

    def equal() -> bool:
        reply = AdminClient(worker.url, READ_TOKEN).request("GET", url)
        last["document"] = reply.body
        return reply.status == 200 and not report_differences(expected, reply.body)

    try:
        wait_until(equal, timeout_s=120, interval_s=1.0)
    except AssertionError:
        found = report_differences(expected, last.get("document") or {})
        raise AssertionError(f"{len(found)} figures differ, e.g. {found[:5]}") from None
    gbstats = gbstats_figures(json.loads(GBSTATS.read_text()))
    wanted = {path: value for path, value in gbstats.items() if not path.endswith("/variance")}
    assert len(wanted) > 50  # every comparison's figures, not an empty agreement
    assert differences(wanted, report_figures(last["document"])) == []
