"""An idle worker's consumers fetch rarely, counted on the wire in front of the broker.

The embedded broker holds every fetch for its full wait, so with the 10 ms the tests (and
`up`) use, an unpaced consumer sends ~65 fetches a second forever; six of them cost an idle
worker ~30% of a core and the broker ~40%. Paced, each consumer fetches at most once per its
idle poll while it finds nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.infra.fetch_wait import DEFAULT_IDLE_POLL_MS
from tests.conftest import Worker, flag
from tests.kafka_counter import CountedBroker, FetchKind

BACKGROUND_POLL_MS = 250  # FLAGSTREAM_BACKGROUND_POLL_MS' default
# Fetch topics of the consumers a flag change crosses: one fetch per idle poll at most.
WRITE_PATH = {("flag-changes",), ("flags-changelog",)}
# Every consumer of a worker paced by idle or background poll (the attribution's own wait is
# 200 ms: FLAGSTREAM_ATTRIBUTION_FETCH_WAIT_MS).
EVERY_CONSUMER = WRITE_PATH | {
    ("dead-letters",),
    ("evaluation-requests",),
    ("experiment-stats",),
    ("experiment-state",),
}
WINDOW_S = 3.0


@pytest.fixture(scope="module")
def counted() -> Iterator[CountedBroker]:
    broker = CountedBroker().start()
    yield broker
    broker.stop()


def bound_per_s(kind: FetchKind) -> float:
    """The most fetches a second a paced consumer of this kind sends while idle (+20%)."""
    poll_ms = max(
        kind.max_wait_ms, DEFAULT_IDLE_POLL_MS if kind.topics in WRITE_PATH else BACKGROUND_POLL_MS
    )
    return 1.2 * 1000 / poll_ms


def rates_over_window(broker: CountedBroker) -> dict[FetchKind, float]:
    """Fetches per second of each kind over the next WINDOW_S (a rate needs a duration)."""
    before, _ = broker.snapshot()
    started = time.monotonic()
    time.sleep(WINDOW_S)
    after, _ = broker.snapshot()
    elapsed = time.monotonic() - started
    return {kind: (after[kind] - before[kind]) / elapsed for kind in after}


def too_fast(rates: dict[FetchKind, float]) -> dict[FetchKind, float]:
    return {kind: rate for kind, rate in rates.items() if rate > bound_per_s(kind)}


def idle_window(broker: CountedBroker) -> dict[FetchKind, float]:
    """Rates of the first window in which every consumer fetched and none above its bound:
    start-up (fences, first commits, rebalances) fetches data and a consumer may start late.
    Unpaced, no window ever qualifies."""
    deadline = time.monotonic() + 30
    while True:
        rates = rates_over_window(broker)
        fetching = {kind.topics for kind, rate in rates.items() if rate > 0}
        if fetching >= EVERY_CONSUMER and not too_fast(rates):
            return rates
        assert time.monotonic() < deadline, f"too fast: {too_fast(rates)}, fetching: {fetching}"


def test_an_idle_worker_fetches_at_most_once_per_idle_poll_per_consumer(
    counted: CountedBroker, tmp_path: Path
) -> None:
    worker = Worker(counted.brokers, tmp_path / "data", "idle-test")
    try:
        worker.start()
        worker.admin().put("idle", "banner", flag())  # the write path saw data once
        idle_window(counted)
    finally:
        worker.stop()


def test_writes_after_an_idle_spell_are_decided_and_answered(
    counted: CountedBroker, tmp_path: Path
) -> None:
    """The pause ends with data: after silence a write is applied (flag changes, changelog)
    and a conflicting one is answered 409 (its dead letter read back)."""
    worker = Worker(counted.brokers, tmp_path / "data", "idle-test-2")
    try:
        worker.start()
        admin = worker.admin()
        first = admin.put("idle2", "banner", flag())
        idle_window(counted)  # every consumer at its longest pause
        assert admin.put("idle2", "banner", flag(default="on"))["seq"] == first["seq"] + 1
        idle_window(counted)
        path = "/api/v1/environments/idle2/flags/banner"
        conflict = admin.request("PUT", path, flag(), {"If-Match": '"99"'})
        assert conflict.status == 409, conflict.body
    finally:
        worker.stop()
