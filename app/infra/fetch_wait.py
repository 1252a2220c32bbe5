"""How long Kafka fetches wait, and how often an idle consumer fetches again.

Kafka answers a waiting fetch as soon as data arrives, so a long `fetch_max_wait_ms` costs
nothing there. The embedded broker (Tansu) does not: it holds every fetch for the full wait,
so Faust's hard-coded 1500 ms becomes ~0.7 s of latency at every hop of the write path, and
the short wait that fixes it (~10 ms) makes every idle consumer send ~65 fetches a second:
six of them cost an idle worker ~30% of a core and the broker ~40%. Faust offers no setting
for its wait; `bound_fetch_wait` wraps the one method that builds its consumer.

`pace_when_idle` keeps the short wait while data flows and for a second after (a burst of
changes keeps today's latency), then pauses before each fetch that follows an empty one,
doubling the pause up to a ceiling: a busy consumer fetches as before, an idle one a few
times a second at most. The pause is on the client, after the
broker's answer, so on Kafka (whose waits end early) a wait as long as the ceiling already
does this and no pause is added.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = ["DEFAULT_IDLE_POLL_MS", "FetchPacer", "bound_fetch_wait", "pace_when_idle"]

DEFAULT_IDLE_POLL_MS = 40  # FLAGSTREAM_IDLE_POLL_MS' default
HOT_S = 1.0  # after records, fetch without pause this long: a burst keeps today's latency


class FetchPacer:
    """Paces one aiokafka fetcher: no pause within HOT_S of records, then pauses doubling
    to a ceiling.

    The fetcher sends a node its next fetch only once the previous one's task has ended, so
    sleeping at the end of that task delays the next fetch without touching anything else
    (heartbeats, commits and offset resets have their own requests).
    """

    def __init__(self, fetcher: Any, wait_ms: int, idle_poll_ms: int, hot_s: float = HOT_S) -> None:
        self.wait_s = wait_ms / 1000
        self.hot_s = hot_s
        # The longest pause: one fetch (its wait included) per `idle_poll_ms` when idle.
        self.ceiling_s = max(0.0, (idle_poll_ms - wait_ms) / 1000)
        self.pause_s = 0.0
        self.records_at = time.monotonic()
        self.fetch = fetcher._proc_fetch_request
        fetcher._proc_fetch_request = self.fetch_then_pause

    async def fetch_then_pause(self, assignment: Any, node_id: int, request: Any) -> bool:
        got_records: bool = await self.fetch(assignment, node_id, request)
        if got_records:
            self.pause_s = 0.0
            self.records_at = time.monotonic()
            return True
        if time.monotonic() - self.records_at < self.hot_s:
            return False
        pause = self.pause_s
        self.pause_s = min(self.ceiling_s, max(self.wait_s, 2 * pause))
        if pause > 0:
            try:
                await asyncio.sleep(pause)
            except asyncio.CancelledError:
                return False  # closed or unassigned: what the fetch itself answers then
        return False


def pace_when_idle(
    consumer: AIOKafkaConsumer, wait_ms: int, idle_poll_ms: int, hot_s: float = HOT_S
) -> None:
    """Let a started consumer fetch at most once per `idle_poll_ms` while it finds nothing.

    Nothing changes when the broker's own wait (`wait_ms`) is already that long. `hot_s`:
    how long after records it fetches without pause; 0 for a consumer whose records come
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
