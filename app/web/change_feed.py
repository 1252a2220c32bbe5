"""Applied changes, fanned out to the open event streams of their environment.

Both event streams (the admin API's change stream and OFREP's notifications) subscribe here:
the flag table calls `publish` for every change it applies (or `publish_all` with the changes
of each write), and each open stream has a bounded queue (`Subscriber`). An environment's
subscriber set goes with its last subscriber, so names a client made up leave nothing behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from app.infra.metrics import Metrics
from app.infra.records import AppliedChange, dumps

__all__ = ["KEEPALIVE_S", "SSE_HEADERS", "ChangeFeed", "Subscriber", "event", "next_change"]

KEEPALIVE_S = 15.0  # also how long a gone client may hold its slot: a write finds it gone
QUEUE_LIMIT = 1000  # changes buffered per client before it is sent a snapshot instead
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class Subscriber:
    """One client's queue; `overflowed` means it missed changes and needs a snapshot."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[AppliedChange] = asyncio.Queue(QUEUE_LIMIT)
        self.overflowed = False

    def offer(self, change: AppliedChange) -> None:
        try:
            self.queue.put_nowait(change)
        except asyncio.QueueFull:
            self.overflowed = True


class ChangeFeed:
    """Subscriber sets per environment, and the tasks serving open streams."""

    def __init__(self, metrics: Metrics) -> None:
        self.subscribers: dict[str, set[Subscriber]] = {}
        self.serving: set[asyncio.Task[object]] = set()
        self.clients = metrics.stream_clients
        metrics.stream_environments.set_function(lambda: len(self.subscribers))

    def publish(self, change: AppliedChange) -> None:
        for subscriber in self.subscribers.get(change.environment, ()):
            subscriber.offer(change)

    def publish_all(self, changes: list[AppliedChange]) -> None:
        """`publish` each of the changes of one table write, in order (a table batch
        listener: `FlagTable.listen_batches`). A catch-up's writes, thousands of changes
        before any stream is open, cost one call each and no look per change."""
        if not self.subscribers:
            return
        for change in changes:
            self.publish(change)

    def subscribe(self, environment: str, subscriber: Subscriber) -> None:
        self.subscribers.setdefault(environment, set()).add(subscriber)

    def unsubscribe(self, environment: str, subscriber: Subscriber) -> None:
        """Remove the subscriber, and its environment's set with the last one."""
        group = self.subscribers.get(environment)
        if group is not None:
            group.discard(subscriber)
            if not group:
                del self.subscribers[environment]

    @asynccontextmanager
    async def subscription(self, environment: str) -> AsyncIterator[Subscriber]:
        """A queue of the environment's changes for one open stream.

        The stream ends quietly when its client goes away or the worker shuts down.
        """
        subscriber = Subscriber()
        self.subscribe(environment, subscriber)
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a stream is served by a task of the event loop")
        self.serving.add(task)
        self.clients.inc()
        try:
            yield subscriber
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.unsubscribe(environment, subscriber)
            self.serving.discard(task)
            self.clients.dec()

    async def close_streams(self, _: web.Application) -> None:
        """Cancel open streams on shutdown; aiohttp would otherwise wait for each to time out."""
        for task in self.serving:
            task.cancel()


async def next_change(subscriber: Subscriber, response: web.StreamResponse) -> AppliedChange:
    """The client's next change; keepalive comments while there is none (proxies cut idle lines)."""
    while True:
        try:
            return await asyncio.wait_for(subscriber.queue.get(), KEEPALIVE_S)
        except TimeoutError:
            await response.write(b": keepalive\n\n")


def event(kind: str, seq: int, data: Any) -> bytes:
    """One server-sent event; its data is one line of compact JSON."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, kind.encode(), dumps(data))
