"""The gap-free change stream: server-sent events of every applied change of an environment.

Each event's `id:` is the environment's sequence number, which has no gaps by construction
(one agent owns an environment's partition and numbers its changes). A client that
reconnects with `Last-Event-ID: n` gets exactly the changes after n from the table's change
log, or, when the log no longer reaches back to n (or the client was too slow to keep up),
one `snapshot` event with every flag, after which changes continue from the snapshot's id.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from faust.web import View

from app import metrics
from app.main import faust_app, flag_table, settings
from app.records import AppliedChange
from app.web.admin import API, check_keys, counted, describe
from app.web.auth import Access, refuse

KEEPALIVE_S = 15.0
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


subscribers: dict[str, set[Subscriber]] = {}
serving: set[asyncio.Task[object]] = set()


async def close_streams(_: web.Application) -> None:
    """Cancel open streams on shutdown; aiohttp would otherwise wait for each to time out."""
    for task in serving:
        task.cancel()


faust_app.web.web_app.on_shutdown.append(close_streams)


def publish(change: AppliedChange) -> None:
    for subscriber in subscribers.get(change.environment, ()):
        subscriber.offer(change)


flag_table.listen(publish)


@asynccontextmanager
async def subscription(environment: str) -> AsyncIterator[Subscriber]:
    """A queue of the environment's changes for one open stream (also used by OFREP's).

    The stream ends quietly when its client goes away or the worker shuts down.
    """
    subscriber = Subscriber()
    subscribers.setdefault(environment, set()).add(subscriber)
    task = asyncio.current_task()
    assert task is not None
    serving.add(task)
    metrics.STREAM_CLIENTS.inc()
    try:
        yield subscriber
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        subscribers[environment].discard(subscriber)
        serving.discard(task)
        metrics.STREAM_CLIENTS.dec()


async def next_change(subscriber: Subscriber, response: web.StreamResponse) -> AppliedChange:
    """The client's next change; keepalive comments while there is none (proxies cut idle lines)."""
    while True:
        try:
            return await asyncio.wait_for(subscriber.queue.get(), KEEPALIVE_S)
        except TimeoutError:
            await response.write(b": keepalive\n\n")


def event(kind: str, seq: int, data: Any) -> bytes:
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"id: {seq}\nevent: {kind}\ndata: {payload}\n\n".encode()


def snapshot(environment: str) -> tuple[int, bytes]:
    seq = flag_table.environment_seq(environment)
    flags = {key: c.definition for key, c in sorted(flag_table.live_flags(environment).items())}
    return seq, event("snapshot", seq, {"environment": environment, "seq": seq, "flags": flags})


def last_event_id(request: web.Request) -> int | None:
    text = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    return int(text) if text is not None and text.strip().isdigit() else None


@faust_app.page(API + "/{env}/stream")
class ChangeStream(View):
    async def get(self, request: web.Request, env: str) -> web.StreamResponse:
        denied = refuse(request, settings, Access.READ) or check_keys(env)
        if denied:
            return counted("stream", denied)
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        async with subscription(env) as subscriber:
            await self.serve(response, env, subscriber, last_event_id(request))
        return counted("stream", response)

    async def serve(
        self, response: web.StreamResponse, env: str, subscriber: Subscriber, last: int | None
    ) -> None:
        # Subscribed before reading the log, so nothing applied in between is lost; the
        # queue may then repeat what the log gave, which `last` filters out.
        missed = flag_table.changes_after(env, last) if last is not None else None
        if missed is None:
            last, body = snapshot(env)
            await response.write(body)
        else:
            for change in missed:
                await response.write(event("change", change.seq, describe(change)))
                last = change.seq
        assert last is not None
        while True:
            change = await next_change(subscriber, response)
            if subscriber.overflowed or change.seq > last + 1:
                subscriber.overflowed = False
                while not subscriber.queue.empty():
                    subscriber.queue.get_nowait()
                last, body = snapshot(env)
                await response.write(body)
            elif change.seq == last + 1:
                await response.write(event("change", change.seq, describe(change)))
                last = change.seq
