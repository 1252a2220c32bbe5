"""OFREP, the OpenFeature Remote Evaluation Protocol: flags evaluated over HTTP for SDKs.

Implements `service/openapi.yaml` of github.com/open-feature/protocol (OFREP 0.3.0):

    POST /ofrep/v1/evaluate/flags/{key}   one flag      200 | 400 | 401 | 403 | 404 | 413
    POST /ofrep/v1/evaluate/flags         every flag    200 | 304 | 400 | 401 | 403 | 413
    GET  /ofrep/v1/events                 change notifications (SSE), advertised by the bulk
                                          response's `eventStreams` (ADR-0008)

An SDK key (`Authorization: Bearer` or `X-API-Key`) selects the environment; nothing in a
request can name another. Evaluation goes through `Evaluator`, which counts it and emits
exposures. `resolution_body` is the one place a `Resolution` becomes an HTTP status and body.

The single-flag endpoint is the hot path (one request per flag evaluation of a server-side
SDK): `app/web/fast_path.py` answers it in front of aiohttp with `evaluate_at_once` and hands
every request it cannot answer at once to `evaluate_flag`. Both make no prometheus-client call
and encode each pre-built outcome once (`encoded`). The handlers are plain aiohttp routes (a
Faust View's dispatch and sensors cost ~10% of their throughput). See
benchmarks/bench_ofrep.py and docs/ofrep.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from app.engine import ErrorCode, JsonObject, Resolution
from app.evaluation.evaluator import Evaluator
from app.evaluation.live_flags import LiveFlags
from app.infra.records import dumps, dumps_sorted
from app.infra.settings import Settings
from app.web import inputs
from app.web.auth import Access, Credentials, bearer
from app.web.change_feed import SSE_HEADERS, ChangeFeed, event, next_change
from tables.flags import FlagTable
from tables.replication import FlagReplication

__all__ = ["OfrepApi", "parse_context", "resolution_body"]

PREFIX: Final = "/ofrep/v1"
EVENTS_PATH: Final = PREFIX + "/events"
# Seconds a client may stay inactive before closing the stream; the spec's default.
INACTIVITY_DELAY_S: Final = 120
# Encoded single-flag bodies kept (see `encoded`): a few per flag version.
BODY_CACHE_SIZE: Final = 8192
# How long a re-fetch that names a newer `flagConfigEtag` waits for this worker to apply it.
CATCH_UP_WAIT_S: Final = 2.0

# Error codes OFREP puts on the wire (`evaluationFailure`, `flagNotFound`); others are GENERAL.
WIRE_CODES: Final = frozenset(
    {
        ErrorCode.FLAG_NOT_FOUND,
        ErrorCode.PARSE_ERROR,
        ErrorCode.TARGETING_KEY_MISSING,
        ErrorCode.INVALID_CONTEXT,
        ErrorCode.GENERAL,
    }
)
# Bound once: a global lookup of a module attribute per request is measurable here.
_perf_counter = time.perf_counter
_time = time.time


def resolution_body(key: str, resolution: Resolution) -> tuple[int, dict[str, Any]]:
    """The HTTP status and OFREP body of one flag's resolution.

    Success (`evaluationSuccess`): key, reason, variant and metadata; `value` is left out
    when the caller's default applies (`codeDefaultFlag`: disabled, or no default variant),
    as flagd does. `variant` is then "" (flagd's "no variant" on its gRPC wire): OFREP lets it
    be left out too, but the Python OFREP provider (0.3.0) reads it unconditionally and fails
    the evaluation without it. FLAG_NOT_FOUND is 404 (`flagNotFound`); every other error is
    400 (`evaluationFailure`).
    """
    code = resolution.error_code
    if code is None:
        body: dict[str, Any] = {"key": key, "reason": resolution.reason}
        if resolution.value is not None:
            body["value"] = resolution.value
        body["variant"] = "" if resolution.variant is None else resolution.variant
        body["metadata"] = resolution.metadata
        return 200, body
    failure = {
        "key": key,
        "errorCode": code if code in WIRE_CODES else ErrorCode.GENERAL,
        "errorDetails": resolution.error_message or code.value,
        "metadata": resolution.metadata,
    }
    return (404 if code is ErrorCode.FLAG_NOT_FOUND else 400), failure


class EncodedBodies:
    """`resolution_body` as bytes, encoded once per pre-built resolution.

    The engine builds every outcome of a flag version once and hands out the same objects
    (`app.engine.compile`), so the bytes are cached by the resolution's identity; the cache
    holds the resolution itself, so the id cannot be reused while cached. Errors carry
    per-call messages and are not cached. Bounded: emptied when full.
    """

    def __init__(self, size: int = BODY_CACHE_SIZE) -> None:
        self.size = size
        self._bodies: dict[int, tuple[Resolution, str, int, bytes]] = {}

    def __call__(self, key: str, resolution: Resolution) -> tuple[int, bytes]:
        cached = self._bodies.get(id(resolution))
        if cached is not None and cached[0] is resolution and cached[1] == key:
            return cached[2], cached[3]
        status, body = resolution_body(key, resolution)
        raw = dumps(body)
        if resolution.error_code is None:
            if len(self._bodies) >= self.size:
                self._bodies.clear()
            self._bodies[id(resolution)] = (resolution, key, status, raw)
        return status, raw


def respond(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=dumps(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def bad_request(key: str | None, status: int, code: ErrorCode, details: str) -> web.Response:
    """An `evaluationFailure` (one flag, with its key) or a `bulkEvaluationFailure` (bulk)."""
    body = {"errorCode": code, "errorDetails": details}
    if key is not None:
        body = {"key": key, **body}
    return respond(status, body)


ContextRefusal = tuple[int, ErrorCode, str]
"""Why a body is not a context: the HTTP status, the error code and the details."""


def parse_context(raw: bytes) -> JsonObject | ContextRefusal:
    """The evaluation context of a request body, or why the body is not one.

    A missing body or `context` is the empty context: the Python OFREP provider sends `{}`
    when the caller has no context. `targetingKey`, when present, must be a string. A body
    nested too deep (`app.infra.json_input.MAX_DEPTH`) is an invalid context.
    """
    if not raw:
        return {}
    body = inputs.decode_body(raw)
    if isinstance(body, inputs.Refused):
        code = ErrorCode.INVALID_CONTEXT if body.too_deep else ErrorCode.PARSE_ERROR
        return 400, code, body.message
    if not isinstance(body, dict):
        return 400, ErrorCode.INVALID_CONTEXT, "the body must be a JSON object"
    context = body.get("context")
    if context is None:
        return {}
    if not isinstance(context, dict):
        return 400, ErrorCode.INVALID_CONTEXT, "context must be a JSON object"
    targeting_key = context.get("targetingKey")
    if targeting_key is not None and not isinstance(targeting_key, str):
        return 400, ErrorCode.INVALID_CONTEXT, "targetingKey must be a string"
    return context


def refetch(environment: str, seq: int, last_modified: float | None) -> bytes:
    """One `refetchEvaluation` notification (openapi.yaml `sseEvent`; id: the env's seq)."""
    data: dict[str, Any] = {"type": "refetchEvaluation", "etag": f'"{seq}"'}
    if last_modified is not None:
        data["lastModified"] = int(last_modified)
    return event("message", seq, data)


class OfrepApi:
    """The OFREP routes of one worker, and the fast path's `Answer` (`evaluate_at_once`)."""

    def __init__(
        self,
        settings: Settings,
        credentials: Credentials,
        flags: FlagTable,
        live_flags: LiveFlags,
        replication: FlagReplication,
        evaluator: Evaluator,
        feed: ChangeFeed,
    ) -> None:
        self.max_body = settings.max_body_bytes
        self.credentials = credentials
        self.flags = flags
        self.live_flags = live_flags
        self.replication = replication
        self.evaluator = evaluator
        self.stats = evaluator.stats
        self.feed = feed
        self.encoded = EncodedBodies()

    def routes(self) -> list[web.RouteDef]:
        """Plain aiohttp routes (see the module docstring for why not Faust Views)."""
        return [
            web.post(PREFIX + "/evaluate/flags/{key}", self.evaluate_flag),
            web.post(PREFIX + "/evaluate/flags", self.evaluate_flags),
            web.get(EVENTS_PATH, self.stream_events),
        ]

    def admits(self, token: str | None) -> bool:
        """Whether a credential may evaluate at all: the fast path's check at the head."""
        return self.credentials.sdk_key_environment(token) is not None

    async def not_ready(self, key: str | None) -> web.Response | None:
        """A 500 while the flag table is still recovering (after a bounded wait), else None.

        Answering from a table that has not caught up would call existing flags
        FLAG_NOT_FOUND; the spec has no 503, and a 500 makes SDKs use the caller's default
        with a GENERAL error.
        """
        if await self.replication.wait_ready():
            return None
        body: dict[str, Any] = {"errorDetails": "the flag table of this worker is still recovering"}
        if key is not None:
            body["key"] = key
        return respond(500, body)

    def refused(self, request: web.Request, key: str | None) -> web.Response:
        """401 without a known SDK key; 403 for an admin or read token (they do not evaluate)."""
        if self.credentials.access_of(bearer(request)) is not Access.NONE:
            status, details = 403, "admin and read tokens do not evaluate flags: use an SDK key"
            headers = None
        else:
            status, details = 401, "an SDK key is required (Authorization: Bearer or X-API-Key)"
            headers = {"WWW-Authenticate": "Bearer"}
        body: dict[str, Any] = {"errorDetails": details}
        if key is not None:
            body["key"] = key
        return respond(status, body, headers)

    async def read_context(
        self, request: web.Request, key: str | None
    ) -> dict[str, Any] | web.Response:
        """The evaluation context of the body (`parse_context`), or the 400/413 response."""
        raw = await inputs.read_body(request, self.max_body)
        if isinstance(raw, inputs.Refused):
            return bad_request(key, raw.status, ErrorCode.GENERAL, raw.message)
        context = parse_context(raw)
        return context if isinstance(context, dict) else bad_request(key, *context)

    async def evaluate_flag(self, request: web.Request) -> web.Response:
        """`POST /ofrep/v1/evaluate/flags/{key}`: one flag for the body's context."""
        started = _perf_counter()
        key = request.match_info["key"]
        environment = self.credentials.sdk_environment(request)
        if environment is None:
            return self.refused(request, key)
        context = await self.read_context(request, key)
        if isinstance(context, web.Response):
            return context
        if not self.replication.ready.is_set() and (unready := await self.not_ready(key)):
            return unready
        status, body = self.answer_flag(environment, key, context)
        response = web.Response(body=body, status=status, content_type="application/json")
        self.stats.observe("ofrep", _perf_counter() - started)
        return response

    def evaluate_at_once(self, token: str | None, key: str, raw: bytes) -> tuple[int, bytes] | None:
        """`evaluate_flag`'s answer when it needs no wait and the request itself is right.

        The fast path's `Answer` (`app.web.fast_path`). None, before any side effect, leaves
        the request to `evaluate_flag`: a missing or wrong key, a body that is not a context,
        or a worker still recovering, so each of those answers is written in one place.
        """
        started = _perf_counter()
        environment = self.credentials.sdk_key_environment(token)
        if environment is None or not self.replication.ready.is_set():
            return None
        context = parse_context(raw)
        if not isinstance(context, dict):
            return None
        answer = self.answer_flag(environment, key, context)
        self.stats.observe("ofrep", _perf_counter() - started)
        return answer

    def answer_flag(
        self, environment: str, key: str, context: Mapping[str, Any]
    ) -> tuple[int, bytes]:
        """One flag evaluated (counted, exposed) and encoded: the answer of both paths."""
        _, _, resolution = self.evaluator.one(environment, key, context, _time(), "ofrep")
        return self.encoded(key, resolution)

    def bulk_etag(self, environment: str, context: Mapping[str, Any]) -> str:
        """Changes when any flag of the environment changes, or when the context does.

        The environment's version alone would answer 304 to a client whose context changed.
        """
        canonical = dumps_sorted(context)
        digest = hashlib.blake2b(canonical, digest_size=8).hexdigest()
        return f'"{self.live_flags.etag(environment).strip(chr(34))}-{digest}"'

    async def catch_up(self, environment: str, wanted: str | None) -> None:
        """Wait (bounded) until this worker has applied the version an SSE event announced.

        The event may come from another worker than the one answering the re-fetch.
        """
        target = inputs.parse_version(None if wanted is None else wanted.strip('"'))
        if target is None or self.flags.environment_seq(environment) >= target:
            return
        async with self.feed.subscription(environment) as subscriber:
            try:
                async with asyncio.timeout(CATCH_UP_WAIT_S):
                    while self.flags.environment_seq(environment) < target:
                        await subscriber.queue.get()
            except TimeoutError:
                pass  # answer with what this worker has

    async def evaluate_flags(self, request: web.Request) -> web.Response:
        """`POST /ofrep/v1/evaluate/flags`: every flag of the environment for the body's context.

        Per-flag errors are items of the 200 body; the ETag covers flags and context.
        """
        started = _perf_counter()
        environment = self.credentials.sdk_environment(request)
        if environment is None:
            return self.refused(request, None)
        context = await self.read_context(request, None)
        if isinstance(context, web.Response):
            return context
        if not self.replication.ready.is_set() and (unready := await self.not_ready(None)):
            return unready
        await self.catch_up(environment, request.query.get("flagConfigEtag"))
        etag = self.bulk_etag(environment, context)
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        evaluated = self.evaluator.many(environment, None, context, _time(), "ofrep")
        flags = [resolution_body(key, resolution)[1] for key, _, resolution in evaluated]
        body = {
            "flags": flags,
            "eventStreams": [
                {
                    "type": "sse",
                    "endpoint": {"requestUri": EVENTS_PATH},
                    "inactivityDelaySec": INACTIVITY_DELAY_S,
                }
            ],
        }
        response = respond(200, body, {"ETag": etag})
        self.stats.observe("ofrep_bulk", _perf_counter() - started)
        return response

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
            return self.refused(request, None)
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        await self.notify(request, response, environment)
        return response
