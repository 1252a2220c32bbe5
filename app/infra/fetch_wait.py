"""How long Kafka fetches wait, and how often an idle consumer fetches again.

Kafka answers a waiting fetch as soon as data arrives, so a long `fetch_max_wait_ms` costs
nothing there. The embedded broker (Tansu) does not: it looks for data only at half the wait,
then three quarters and so on, so Faust's hard-coded 1500 ms becomes ~0.7 s of latency at
every hop of the write path, and
the short wait that fixes it (~10 ms) makes every idle consumer send ~65 fetches a second:
six of them cost an idle worker ~30% of a core and the broker ~40%. Faust offers no setting
for its wait; `bound_fetch_wait` wraps the one method that builds its consumer.

`pace_when_idle` keeps the short wait while data flows and for a second after (a burst of
changes keeps today's latency), then lengthens the wait of each fetch that follows an empty
one, doubling it up to a ceiling (the idle poll): a busy consumer fetches as before, an idle
one once per idle poll at most. A long wait, not a pause on the client: measured with
benchmarks/bench_fetch_cost.py, Tansu answers a waiting fetch at the first of its checks
(half the wait, then three quarters, ...) that finds data, so a record reaches an idle
consumer within half its idle poll, where a pause before a short fetch made it wait the whole
poll; Kafka answers at once. Either way one fetch per idle poll, and an empty fetch costs about
the same whatever its wait (~1-2 ms of CPU on each side, requests not partitions).
"""

from __future__ import annotations

import time
from typing import Any

from aiokafka import AIOKafkaConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = [
    "DEFAULT_IDLE_POLL_MS",
    "LOOP_WAKE_MS",
    "QUIET_POLL_MS",
    "FetchPacer",
    "bound_fetch_wait",
    "pace_when_idle",
    "quiet_poll_ms",
]

DEFAULT_IDLE_POLL_MS = 40  # FLAGSTREAM_IDLE_POLL_MS' default
HOT_S = 1.0  # after records, keep the short wait this long: a burst keeps today's latency
# The idle pace of the consumers no flag change crosses and nothing times in milliseconds:
# the experiment-stats feed (results are read by people) and the dead letters (only a
# rejected write waits for one: after silence up to ~half this on the embedded broker, none on
# Kafka). An idle worker's CPU is its fetches (~1 ms each on either side at the embedded
# broker); at the 250 ms background poll these two made ~8 of its ~60 a second.
QUIET_POLL_MS = 1000
# How long a consumer loop's `getmany` waits for records before it turns again: the fetcher
# delivers records the moment they come, so a short timeout only wakes the loop for nothing
# (at 200 ms, five turns a second per loop at saturation, each a turn an OFREP request waits).
LOOP_WAKE_MS = 1000


def quiet_poll_ms(background_poll_ms: int) -> int:
    """The idle pace of a quiet consumer: `QUIET_POLL_MS`, or the background poll if longer."""
    return max(QUIET_POLL_MS, background_poll_ms)


class FetchPacer:
    """Paces one aiokafka fetcher: its short wait within HOT_S of records, then a wait
    doubling to a ceiling after each empty fetch.

    The fetcher builds each fetch request from `_fetch_max_wait_ms` once the previous fetch's
    task has ended, so setting it at the end of that task sets the next fetch's wait without
    touching anything else (heartbeats, commits and offset resets have their own requests).
    """

    def __init__(self, fetcher: Any, wait_ms: int, idle_poll_ms: int, hot_s: float = HOT_S) -> None:
        self.fetcher = fetcher
        self.wait_ms = wait_ms
        self.hot_s = hot_s
        # The longest wait: one fetch per `idle_poll_ms` when idle.
        self.ceiling_ms = max(wait_ms, idle_poll_ms)
        self.records_at = time.monotonic()
        self.fetch = fetcher._proc_fetch_request
        fetcher._proc_fetch_request = self.fetch_then_pace

    @property
    def next_wait_ms(self) -> int:
        """The wait the fetcher's next request asks the broker for."""
        return int(self.fetcher._fetch_max_wait_ms)

    async def fetch_then_pace(self, assignment: Any, node_id: int, request: Any) -> bool:
        got_records: bool = await self.fetch(assignment, node_id, request)
        if got_records:
            self.records_at = time.monotonic()
            self.fetcher._fetch_max_wait_ms = self.wait_ms
        elif time.monotonic() - self.records_at >= self.hot_s:
            self.fetcher._fetch_max_wait_ms = min(self.ceiling_ms, 2 * self.next_wait_ms)
        return got_records


def pace_when_idle(
    consumer: AIOKafkaConsumer, wait_ms: int, idle_poll_ms: int, hot_s: float = HOT_S
) -> None:
    """Let a started consumer fetch at most once per `idle_poll_ms` while it finds nothing:
    its fetches wait that long at the broker.

    Nothing changes when the broker's own wait (`wait_ms`) is already that long. `hot_s`:
    how long after records it keeps the short wait; 0 for a consumer whose records come
    one at a time now and then (e.g. a progress record every few seconds), for which a
    second of fast fetches after each would cost more than the records themselves.
    """
    if idle_poll_ms <= wait_ms:
        return
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None:
        raise RuntimeError("pace_when_idle needs a started consumer (its fetcher)")
    FetchPacer(fetcher, wait_ms, idle_poll_ms, hot_s)


def bound_fetch_wait(max_wait_ms: int, idle_poll_ms: int = DEFAULT_IDLE_POLL_MS) -> None:
    """Make Faust's worker consumer (the flag-change agent's) wait at most `max_wait_ms` per
    fetch and fetch at most once per `idle_poll_ms` while it finds nothing (idempotent)."""
    thread_class: Any = faust_aiokafka.AIOKafkaConsumerThread
    original = (
        getattr(thread_class, "_flagstream_original_create", None)
        or thread_class._create_worker_consumer
    )

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        # AIOKafkaConsumer keeps the value until start() builds its Fetcher from it.
        consumer._fetch_max_wait_ms = max_wait_ms
        _pace_after_start(consumer, max_wait_ms, idle_poll_ms)
        return consumer

    thread_class._flagstream_original_create = original
    thread_class._create_worker_consumer = create_worker_consumer


def _pace_after_start(consumer: Any, wait_ms: int, idle_poll_ms: int) -> None:
    """Faust starts the consumer it built: pace it once its fetcher exists."""
    start = consumer.start

    async def start_then_pace() -> None:
        await start()
        pace_when_idle(consumer, wait_ms, idle_poll_ms)

    consumer.start = start_then_pace
