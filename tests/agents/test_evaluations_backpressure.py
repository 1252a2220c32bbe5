"""The Kafka evaluation loop under a burst: consumed slower within its in-flight bound.

A broker of its own, so the bounded worker is the only one answering and its metrics count
the whole burst.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from app.evaluation.client import EvaluationClient
from app.evaluation.records import EvaluationResult
from tests.conftest import Worker, flag, own_broker
from tests.worker_topics import topics_of

broker = pytest.fixture(own_broker, name="broker")
BOUND = 8  # FLAGSTREAM_EVALUATION_MAX_IN_FLIGHT of the worker under test
BURST = 1000


def in_flight_metrics(worker: Worker) -> tuple[float, float]:
    """(most results ever in flight at once, seconds the loop waited at the bound)."""
    text = worker.metrics()
    peak = re.search(r"^flagstream_evaluation_results_in_flight_peak (\S+)$", text, re.M)
    waited = re.search(r"^flagstream_evaluation_backpressure_seconds_total (\S+)$", text, re.M)
    assert peak is not None and waited is not None, "the in-flight metrics are missing"
    return float(peak[1]), float(waited[1])


def test_a_burst_is_consumed_slower_within_the_in_flight_bound(
    broker: str, cluster: list[Worker], tmp_path: Path, env: str
) -> None:
    """1,000 requests at once against a bound of 8 results in flight: every one is answered,
    the bound holds all along (the peak gauge), and the loop waited for acks to keep it."""
    worker = Worker(
        broker,
        tmp_path / "data",
        "flagstream-bounded",
        FLAGSTREAM_EVALUATION_MAX_IN_FLIGHT=str(BOUND),
    )
    cluster.append(worker)
    worker.start()
    worker.admin().put(env, "plain", flag("on"))
    contexts = [{"targetingKey": f"burst-{i}"} for i in range(BURST)]

    async def burst() -> list[EvaluationResult]:
        async with EvaluationClient(
            broker, topics=topics_of(worker), timeout_s=120, fetch_max_wait_ms=10
        ) as client:
            return await asyncio.gather(*(client.evaluate(env, c, ["plain"]) for c in contexts))

    results = asyncio.run(burst())
    assert [r.flags["plain"].value for r in results] == [True] * BURST
    peak, waited = in_flight_metrics(worker)
    assert 1 <= peak <= BOUND
    assert waited > 0, f"a burst of {BURST} never reached a bound of {BOUND}"
