"""OFREP's change notifications: `GET /ofrep/v1/events`, server-sent events (ADR-0008).

A notification carries no flags, only the environment's new version: the SDK re-fetches its
bulk evaluation (advertised in the bulk response's `eventStreams`). Bursts coalesce into one
notification, and a client that reconnects having missed changes is told at once.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from app.web import inputs
from app.web.auth import Credentials
from app.web.change_feed import SSE_HEADERS, ChangeFeed, event, next_change
from app.web.ofrep_wire import PREFIX, refused
from tables.flags import FlagTable

__all__ = ["EVENTS_PATH", "INACTIVITY_DELAY_S", "OfrepEvents", "refetch"]

EVENTS_PATH: Final = PREFIX + "/events"
# Seconds a client may stay inactive before closing the stream; the spec's default.
INACTIVITY_DELAY_S: Final = 120


def refetch(environment: str, seq: int, last_modified: float | None) -> bytes:
    """One `refetchEvaluation` notification (openapi.yaml `sseEvent`; id: the env's seq)."""
    data: dict[str, Any] = {"type": "refetchEvaluation", "etag": f'"{seq}"'}
    if last_modified is not None:
        data["lastModified"] = int(last_modified)
    return event("message", seq, data)


class OfrepEvents:
    """The notification stream of the SDK key's environment."""

    def __init__(self, credentials: Credentials, flags: FlagTable, feed: ChangeFeed) -> None:
        self.credentials = credentials
        self.flags = flags
        self.feed = feed

    def routes(self) -> list[web.RouteDef]:
        return [web.get(EVENTS_PATH, self.stream_events)]

    async def notify(
        self, request: web.Request, response: web.StreamResponse, environment: str
    ) -> None:
        """One notification per burst of changes, and one at once to a client that missed some.

        Notifications carry no flags, so missed changes collapse into one: the client
        re-fetches. A `Last-Event-ID` that is no event id is no hint: answered as absent.
        """
        async with self.feed.subscription(environment) as subscriber:
            last = inputs.last_event_id(request)
            seq = self.flags.environment_seq(environment)
            if isinstance(last, int) and last < seq:
                await response.write(refetch(environment, seq, None))
            else:
                await response.write(b": connected\n\n")
            while True:
                change = await next_change(subscriber, response)
                while not subscriber.queue.empty():  # coalesce a burst
                    change = subscriber.queue.get_nowait()
                subscriber.overflowed = False  # a full queue lost changes: the re-fetch has them
                seq = self.flags.environment_seq(environment)
                await response.write(refetch(environment, seq, change.updated_at))

    async def stream_events(self, request: web.Request) -> web.StreamResponse:
        """`GET /ofrep/v1/events`: change notifications for the SDK key's environment."""
        environment = self.credentials.sdk_environment(request)
        if environment is None:
            return refused(self.credentials, request, None)
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        await self.notify(request, response, environment)
        return response
