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

import hashlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from app.infra.metrics import Metrics
from app.infra.settings import Settings
from app.web import inputs
from app.web.admin_answers import API, check_keys, describe, not_ready
from app.web.auth import Access, Credentials, bearer
from app.web.change_feed import KEEPALIVE_S, SSE_HEADERS, ChangeFeed, Subscriber, event, next_change
from app.web.responses import error
from tables.flags import FlagTable
from tables.replication import FlagReplication

__all__ = ["ChangeStreamApi", "StreamSlots"]


class StreamSlots:
    """Open streams, in all and per token, against their caps; tokens are counted by digest."""

    def __init__(self, total: int, per_key: int, metrics: Metrics) -> None:
        self.total, self.per_key = total, per_key
        self.refusals = metrics.stream_refusals
        self.open = 0
        self.by_key: Counter[bytes] = Counter()

    def refusal(self, token: str) -> web.Response | None:
        """A 429 (this token's share is used) or 503 (the worker's) response, else None."""
        retry = {"Retry-After": str(int(KEEPALIVE_S))}
        if self.by_key[_digest(token)] >= self.per_key:
            self.refusals.labels("per_key").inc()
            message = f"this token holds {self.per_key} streams on this worker, the most allowed"
            return error(429, "TOO_MANY_STREAMS", message, headers=retry)
        if self.open >= self.total:
            self.refusals.labels("total").inc()
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


class ChangeStreamApi:
    """`GET /api/v1/environments/{env}/stream`: every applied change, gap-free."""

    def __init__(
        self,
        settings: Settings,
        credentials: Credentials,
        flags: FlagTable,
        replication: FlagReplication,
        feed: ChangeFeed,
        metrics: Metrics,
    ) -> None:
        self.credentials = credentials
        self.flags = flags
        self.replication = replication
        self.feed = feed
        self.slots = StreamSlots(settings.max_streams, settings.max_streams_per_key, metrics)

    def routes(self) -> list[web.RouteDef]:
        return [web.get(API + "/{env}/stream", self.stream)]

    def snapshot(self, environment: str) -> tuple[int, bytes]:
        seq = self.flags.environment_seq(environment)
        live = sorted(self.flags.live_flags(environment).items())
        flags = {key: change.definition for key, change in live}
        body = {"environment": environment, "seq": seq, "flags": flags}
        return seq, event("snapshot", seq, body)

    async def unknown_environment(self, request: web.Request, env: str) -> web.Response | None:
        """404 for an environment this worker does not have, unless the token may create it: a
        reader cannot hold a subscriber set for a name it made up. 503 while still recovering."""
        if self.flags.has_environment(env):
            return None
        if self.credentials.access_of(bearer(request)) >= Access.WRITE:
            return None
        if unready := await not_ready(self.replication):
            return unready
        if self.flags.has_environment(env):
            return None
        return error(404, "ENVIRONMENT_NOT_FOUND", f"no environment {env!r}")

    async def stream(self, request: web.Request) -> web.StreamResponse:
        env = request.match_info["env"]
        denied = self.credentials.refuse(request, Access.READ) or check_keys(env)
        if denied:
            return denied
        last = inputs.last_event_id(request)
        if isinstance(last, inputs.Refused):
            return error(last.status, "BAD_REQUEST", last.message)
        token = bearer(request) or ""
        refused = await self.unknown_environment(request, env) or self.slots.refusal(token)
        if refused:
            return refused
        with self.slots.held(token):
            response = web.StreamResponse(headers=SSE_HEADERS)
            await response.prepare(request)
            async with self.feed.subscription(env) as subscriber:
                await self.serve(response, env, subscriber, last)
        return response

    async def serve(
        self, response: web.StreamResponse, env: str, subscriber: Subscriber, last: int | None
    ) -> None:
        # Subscribed before reading the log, so nothing applied in between is lost; the
        # queue may then repeat what the log gave, which `last` filters out.
        missed = self.flags.changes_after(env, last) if last is not None else None
        if last is None or missed is None:
            last, body = self.snapshot(env)
            await response.write(body)
        else:
            for change in missed:
                await response.write(event("change", change.seq, describe(change)))
                last = change.seq
        while True:
            change = await next_change(subscriber, response)
            if subscriber.overflowed or change.seq > last + 1:
                subscriber.overflowed = False
                while not subscriber.queue.empty():
                    subscriber.queue.get_nowait()
                last, body = self.snapshot(env)
                await response.write(body)
            elif change.seq == last + 1:
                await response.write(event("change", change.seq, describe(change)))
                last = change.seq
