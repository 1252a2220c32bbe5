"""The gap-free change stream: server-sent events of every applied change of an environment.

Each event's `id:` is the environment's sequence number, which has no gaps by construction
(one agent owns an environment's partition and numbers its changes). A client that
reconnects with `Last-Event-ID: n` gets exactly the changes after n from the table's change
log, or, when the log no longer reaches back to n (or the client was too slow to keep up),
one `snapshot` event with every flag, after which changes continue from the snapshot's id.

Streams are capped per token and per worker (`StreamSlots`): each holds a connection and a
queue. A reader may only watch an environment that exists; the admin may watch one before
creating it. An environment's subscriber set goes with its last subscriber.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from aiohttp import web
from faust.web import View

from app.infra import metrics
from app.infra.records import AppliedChange
from app.main import faust_app, flag_table, settings
from app.web.admin import API, check_keys, describe, recovering
from app.web.auth import Access, access_of, bearer, refuse
from app.web.responses import error

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


class StreamSlots:
    """Open streams, in all and per token, against their caps; tokens are counted by digest."""

    def __init__(self, total: int, per_key: int) -> None:
        self.total, self.per_key = total, per_key
        self.open = 0
        self.by_key: Counter[bytes] = Counter()

    def refusal(self, token: str) -> web.Response | None:
        """A 429 (this token's share is used) or 503 (the worker's) response, else None."""
        retry = {"Retry-After": str(int(KEEPALIVE_S))}
        if self.by_key[_digest(token)] >= self.per_key:
            metrics.STREAM_REFUSALS.labels("per_key").inc()
            message = f"this token holds {self.per_key} streams on this worker, the most allowed"
            return error(429, "TOO_MANY_STREAMS", message, headers=retry)
        if self.open >= self.total:
            metrics.STREAM_REFUSALS.labels("total").inc()
            message = f"this worker serves {self.total} streams, its most; retry later or elsewhere"
            return error(503, "STREAM_CAPACITY", message, headers=retry)
        return None

    @contextmanager
    def held(self, token: str) -> Iterator[None]:
        """One slot for the block; take it right after `refusal` said None (no await between)."""
        key = _digest(token)
        self.open += 1
        self.by_key[key] += 1
        try:
            yield
        finally:
            self.open -= 1
            self.by_key[key] -= 1
            if not self.by_key[key]:
                del self.by_key[key]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


subscribers: dict[str, set[Subscriber]] = {}
serving: set[asyncio.Task[object]] = set()
slots = StreamSlots(settings.max_streams, settings.max_streams_per_key)
metrics.STREAM_ENVIRONMENTS.set_function(lambda: len(subscribers))


async def close_streams(_: web.Application) -> None:
    """Cancel open streams on shutdown; aiohttp would otherwise wait for each to time out."""
    for task in serving:
        task.cancel()


faust_app.web.web_app.on_shutdown.append(close_streams)


def publish(change: AppliedChange) -> None:
    for subscriber in subscribers.get(change.environment, ()):
        subscriber.offer(change)


flag_table.listen(publish)


def subscribe(environment: str, subscriber: Subscriber) -> None:
    subscribers.setdefault(environment, set()).add(subscriber)


def unsubscribe(environment: str, subscriber: Subscriber) -> None:
    """Remove the subscriber, and its environment's set with the last one: made-up names
    must not leave a set behind."""
    group = subscribers.get(environment)
    if group is not None:
        group.discard(subscriber)
        if not group:
            del subscribers[environment]


@asynccontextmanager
async def subscription(environment: str) -> AsyncIterator[Subscriber]:
    """A queue of the environment's changes for one open stream (also used by OFREP's).

    The stream ends quietly when its client goes away or the worker shuts down.
    """
    subscriber = Subscriber()
    subscribe(environment, subscriber)
    task = asyncio.current_task()
    assert task is not None
    serving.add(task)
    metrics.STREAM_CLIENTS.inc()
    try:
        yield subscriber
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        unsubscribe(environment, subscriber)
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


# ASCII digits only: `str.isdigit()` also takes "²", which `int()` refuses; 20 digits hold
# any sequence number, and `int()` refuses more than 4300.
CHANGE_ID = re.compile(r"[0-9]{1,20}")


def last_event_id(request: web.Request) -> int | web.Response | None:
    """The change id a reconnecting client saw last (None: a new client), or a 400 response."""
    text = (
        request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or ""
    ).strip()
    if not text:
        return None
    if not CHANGE_ID.fullmatch(text):
        message = "Last-Event-ID (or ?last_event_id) must be the id of an event: up to 20 digits"
        return error(400, "BAD_REQUEST", message)
    return int(text)


async def unknown_environment(request: web.Request, env: str) -> web.Response | None:
    """404 for an environment this worker does not have, unless the token may create it: a
    reader cannot hold a subscriber set for a name it made up. 503 while still recovering."""
    if flag_table.has_environment(env) or access_of(bearer(request), settings) >= Access.WRITE:
        return None
    if unready := await recovering():
        return unready
    if flag_table.has_environment(env):
        return None
    return error(404, "ENVIRONMENT_NOT_FOUND", f"no environment {env!r}")


@faust_app.page(API + "/{env}/stream")
class ChangeStream(View):
    async def get(self, request: web.Request, env: str) -> web.StreamResponse:
        denied = refuse(request, settings, Access.READ) or check_keys(env)
        if denied:
            return denied
        last = last_event_id(request)
        if isinstance(last, web.Response):
            return last
        token = bearer(request) or ""
        refused = await unknown_environment(request, env) or slots.refusal(token)
        if refused:
            return refused
        with slots.held(token):
            response = web.StreamResponse(headers=SSE_HEADERS)
            await response.prepare(request)
            async with subscription(env) as subscriber:
                await self.serve(response, env, subscriber, last)
        return response

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
