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
import json
import time
from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from app.engine import ErrorCode, Resolution
from app.infra.records import dumps
from app.main import (
    evaluation_stats,
    evaluator,
    faust_app,
    flag_table,
    live_flags,
    replication,
    settings,
)
from app.web import inputs
from app.web.auth import Access, access_of, bearer, sdk_environment, sdk_key_environment
from app.web.fast_path import FastPathWeb
from app.web.stream import (
    SSE_HEADERS,
    Subscriber,
    event,
    next_change,
    subscribers,
    subscription,
)

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
_bodies: dict[int, tuple[Resolution, str, int, bytes]] = {}
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


def encoded(key: str, resolution: Resolution) -> tuple[int, bytes]:
    """`resolution_body` as bytes, encoded once per pre-built resolution.

    The engine builds every outcome of a flag version once and hands out the same objects
    (`app.engine.compile`), so the bytes are cached by the resolution's identity; the cache
    holds the resolution itself, so the id cannot be reused while cached. Errors carry
    per-call messages and are not cached. Bounded: emptied when full.
    """
    cached = _bodies.get(id(resolution))
    if cached is not None and cached[0] is resolution and cached[1] == key:
        return cached[2], cached[3]
    status, body = resolution_body(key, resolution)
    raw = dumps(body)
    if resolution.error_code is None:
        if len(_bodies) >= BODY_CACHE_SIZE:
            _bodies.clear()
        _bodies[id(resolution)] = (resolution, key, status, raw)
    return status, raw


def respond(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=dumps(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


async def not_ready(key: str | None) -> web.Response | None:
    """A 500 while the flag table is still recovering (after a bounded wait), else None.

    Answering from a table that has not caught up would call existing flags FLAG_NOT_FOUND;
    the spec has no 503, and a 500 makes SDKs use the caller's default with a GENERAL error.
    """
    if await replication.wait_ready():
        return None
    body: dict[str, Any] = {"errorDetails": "the flag table of this worker is still recovering"}
    if key is not None:
        body["key"] = key
    return respond(500, body)


def refused(request: web.Request, key: str | None) -> web.Response:
    """401 without a known SDK key; 403 for an admin or read token (they do not evaluate)."""
    if access_of(bearer(request), settings) is not Access.NONE:
        status, details = 403, "admin and read tokens do not evaluate flags: use an SDK key"
        headers = None
    else:
        status, details = 401, "an SDK key is required (Authorization: Bearer or X-API-Key)"
        headers = {"WWW-Authenticate": "Bearer"}
    body: dict[str, Any] = {"errorDetails": details}
    if key is not None:
        body["key"] = key
    return respond(status, body, headers)


def bad_request(key: str | None, status: int, code: ErrorCode, details: str) -> web.Response:
    """An `evaluationFailure` (one flag, with its key) or a `bulkEvaluationFailure` (bulk)."""
    body = {"errorCode": code, "errorDetails": details}
    if key is not None:
        body = {"key": key, **body}
    return respond(status, body)


Rejection = tuple[int, ErrorCode, str]
"""Why a body is not a context: the HTTP status, the error code and the details."""


def parse_context(raw: bytes) -> dict[str, Any] | Rejection:
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


async def read_context(request: web.Request, key: str | None) -> dict[str, Any] | web.Response:
    """The evaluation context of the body (`parse_context`), or the 400/413 response."""
    raw = await inputs.read_body(request, settings.max_body_bytes)
    if isinstance(raw, inputs.Refused):
        return bad_request(key, raw.status, ErrorCode.GENERAL, raw.message)
    context = parse_context(raw)
    return context if isinstance(context, dict) else bad_request(key, *context)


async def evaluate_flag(request: web.Request) -> web.Response:
    """`POST /ofrep/v1/evaluate/flags/{key}`: one flag for the body's context."""
    started = _perf_counter()
    key = request.match_info["key"]
    environment = sdk_environment(request, settings)
    if environment is None:
        return refused(request, key)
    context = await read_context(request, key)
    if isinstance(context, web.Response):
        return context
    if not replication.ready.is_set() and (unready := await not_ready(key)):
        return unready
    status, body = answer_flag(environment, key, context)
    response = web.Response(body=body, status=status, content_type="application/json")
    evaluation_stats.observe("ofrep", _perf_counter() - started)
    return response


def evaluate_at_once(token: str | None, key: str, raw: bytes) -> tuple[int, bytes] | None:
    """`evaluate_flag`'s answer when it needs no wait and the request itself is right.

    The fast path's `Answer` (`app.web.fast_path`). None, before any side effect, leaves the
    request to `evaluate_flag`: a missing or wrong key, a body that is not a context, or a
    worker still recovering, so each of those answers is written in one place.
    """
    started = _perf_counter()
    environment = sdk_key_environment(token, settings)
    if environment is None or not replication.ready.is_set():
        return None
    context = parse_context(raw)
    if not isinstance(context, dict):
        return None
    answer = answer_flag(environment, key, context)
    evaluation_stats.observe("ofrep", _perf_counter() - started)
    return answer


def answer_flag(environment: str, key: str, context: Mapping[str, Any]) -> tuple[int, bytes]:
    """One flag evaluated (counted, exposed) and encoded: the answer of both paths."""
    _, _, resolution = evaluator.one(environment, key, context, _time(), "ofrep")
    return encoded(key, resolution)


def bulk_etag(environment: str, context: Mapping[str, Any]) -> str:
    """Changes when any flag of the environment changes, or when the context does.

    The environment's version alone would answer 304 to a client whose context changed.
    """
    canonical = json.dumps(context, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()
    return f'"{live_flags.etag(environment).strip(chr(34))}-{digest}"'


async def catch_up(environment: str, wanted: str | None) -> None:
    """Wait (bounded) until this worker has applied the version an SSE event announced.

    The event may come from another worker than the one answering the re-fetch.
    """
    target = inputs.parse_version(None if wanted is None else wanted.strip('"'))
    if target is None:
        return
    if flag_table.environment_seq(environment) >= target:
        return
    subscriber = Subscriber()
    subscribers.setdefault(environment, set()).add(subscriber)
    try:
        async with asyncio.timeout(CATCH_UP_WAIT_S):
            while flag_table.environment_seq(environment) < target:
                await subscriber.queue.get()
    except TimeoutError:
        pass  # answer with what this worker has
    finally:
        subscribers[environment].discard(subscriber)


async def evaluate_flags(request: web.Request) -> web.Response:
    """`POST /ofrep/v1/evaluate/flags`: every flag of the environment for the body's context.

    Per-flag errors are items of the 200 body; the ETag covers flags and context.
    """
    started = _perf_counter()
    environment = sdk_environment(request, settings)
    if environment is None:
        return refused(request, None)
    context = await read_context(request, None)
    if isinstance(context, web.Response):
        return context
    if not replication.ready.is_set() and (unready := await not_ready(None)):
        return unready
    await catch_up(environment, request.query.get("flagConfigEtag"))
    etag = bulk_etag(environment, context)
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    flags = []
    for key, _, resolution in evaluator.many(environment, None, context, _time(), "ofrep"):
        flags.append(resolution_body(key, resolution)[1])
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
    evaluation_stats.observe("ofrep_bulk", _perf_counter() - started)
    return response


def refetch(environment: str, seq: int, last_modified: float | None) -> bytes:
    """One `refetchEvaluation` notification (openapi.yaml `sseEvent`; id: the env's seq)."""
    data: dict[str, Any] = {"type": "refetchEvaluation", "etag": f'"{seq}"'}
    if last_modified is not None:
        data["lastModified"] = int(last_modified)
    return event("message", seq, data)


def last_event_id(request: web.Request) -> int | None:
    return inputs.parse_version(request.headers.get("Last-Event-ID"))


async def notify(request: web.Request, response: web.StreamResponse, environment: str) -> None:
    """Send one notification per burst of changes, and one at once to a client that missed some.

    Notifications carry no flags, so missed changes collapse into one: the client re-fetches.
    """
    async with subscription(environment) as subscriber:
        last = last_event_id(request)
        seq = flag_table.environment_seq(environment)
        if last is not None and last < seq:
            await response.write(refetch(environment, seq, None))
        else:
            await response.write(b": connected\n\n")
        while True:
            change = await next_change(subscriber, response)
            while not subscriber.queue.empty():  # coalesce a burst
                change = subscriber.queue.get_nowait()
            subscriber.overflowed = False  # a full queue lost changes: the re-fetch gets them
            seq = flag_table.environment_seq(environment)
            await response.write(refetch(environment, seq, change.updated_at))


async def stream_events(request: web.Request) -> web.StreamResponse:
    """`GET /ofrep/v1/events`: change notifications for the SDK key's environment."""
    environment = sdk_environment(request, settings)
    if environment is None:
        return refused(request, None)
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    await notify(request, response, environment)
    return response


# Plain aiohttp routes on Faust's web app (see the module docstring for why not Views).
_router = faust_app.web.web_app.router
_router.add_post(PREFIX + "/evaluate/flags/{key}", evaluate_flag)
_router.add_post(PREFIX + "/evaluate/flags", evaluate_flags)
_router.add_get(EVENTS_PATH, stream_events)
if settings.ofrep_fast_path and isinstance(faust_app.web, FastPathWeb):
    faust_app.web.answer_first(evaluate_at_once, settings.max_body_bytes)
