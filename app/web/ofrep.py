"""OFREP, the OpenFeature Remote Evaluation Protocol: flags evaluated over HTTP for SDKs.

Implements `service/openapi.yaml` of github.com/open-feature/protocol (OFREP 0.3.0):

    POST /ofrep/v1/evaluate/flags/{key}   one flag      200 | 400 | 401 | 403 | 404 | 413
    POST /ofrep/v1/evaluate/flags         every flag    200 | 304 | 400 | 401 | 403 | 413

and advertises `GET /ofrep/v1/events`, the change notifications (`app.web.ofrep_events`).

An SDK key (`Authorization: Bearer` or `X-API-Key`) selects the environment; nothing in a
request can name another. Evaluation goes through `Evaluator`, which counts it and emits
exposures. How bodies read on the wire is `app.web.ofrep_wire`.

The single-flag endpoint is the hot path (one request per flag evaluation of a server-side
SDK): `app/web/fast_path.py` answers it in front of aiohttp with `evaluate_at_once` and hands
every request it cannot answer at once to `evaluate_flag`; bulk requests likewise with
`evaluate_flags_at_once` and `evaluate_flags` (a bulk answer costs ~1 ms, but a spike of them
must be shed at the fast path's cost, not aiohttp's: benchmarks/bench_spike.py). The
single-flag answers make no prometheus-client call and encode each pre-built outcome once
(`encoded`). The handlers are plain aiohttp routes (a
Faust View's dispatch and sensors cost ~10% of their throughput). See
benchmarks/bench_ofrep.py and docs/ofrep.md.

Both routes, and the fast path through `evaluate_at_once`, shed first: when the event loop
lags past FLAGSTREAM_SHED_LOOP_LAG_MS a share of the requests is answered 429 with
`Retry-After` before its body is read or decoded (`app.web.overload`, which says why the loop's
lag is the queue a request waits in).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qsl

from aiohttp import web

from app.engine import ErrorCode
from app.evaluation.evaluator import Evaluator
from app.evaluation.live_flags import LiveFlags
from app.evaluation.stats import Tallies
from app.infra.metrics import Metrics
from app.infra.records import dumps, dumps_sorted
from app.infra.settings import Settings
from app.web import inputs
from app.web.auth import Credentials
from app.web.change_feed import ChangeFeed
from app.web.ofrep_events import EVENTS_PATH, INACTIVITY_DELAY_S
from app.web.ofrep_wire import (
    PREFIX,
    Contexts,
    EncodedBodies,
    bad_request,
    encode_resolution,
    parse_context,
    refused,
    resolution_body,
    respond,
)
from app.web.overload import RETRY_AFTER_S, LoopLag, shed_body
from tables.flags import FlagTable
from tables.replication import FlagReplication

__all__ = ["OfrepApi"]

ONE_FLAG: Final = PREFIX + "/evaluate/flags/{key}"
EVERY_FLAG: Final = PREFIX + "/evaluate/flags"
SHED_HEADERS: Final = {"Retry-After": str(RETRY_AFTER_S)}

# How long a re-fetch that names a newer `flagConfigEtag` waits for this worker to apply it.
CATCH_UP_WAIT_S: Final = 2.0
VERSION_PARAMETER: Final = "flagConfigEtag"  # the query parameter of a re-fetch
EVENT_STREAMS: Final = [
    {
        "type": "sse",
        "endpoint": {"requestUri": EVENTS_PATH},
        "inactivityDelaySec": INACTIVITY_DELAY_S,
    }
]

# Bound once: a global lookup of a module attribute per request is measurable here.
_perf_counter = time.perf_counter
_time = time.time


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
        metrics: Metrics,
    ) -> None:
        self.max_body = settings.max_body_bytes
        self.credentials = credentials
        self.flags = flags
        self.live_flags = live_flags
        self.replication = replication
        self.evaluator = evaluator
        self.stats = evaluator.stats
        self.latency = self.stats.histogram("ofrep")  # the fast path observes into it directly
        self.ready = replication.ready
        self.feed = feed
        self.encoded = EncodedBodies()
        self.tallies = Tallies(self.stats, "ofrep")  # the fast path's counts and answers
        self.contexts = Contexts()  # the fast path's parse, by the body's bytes
        self.overload = LoopLag(settings.shed_loop_lag_ms / 1000, metrics.shed_requests)
        metrics.loop_lag_seconds.set_function(lambda: self.overload.sampled_s)

    def routes(self) -> list[web.RouteDef]:
        """Plain aiohttp routes (see the module docstring for why not Faust Views)."""
        return [
            web.post(ONE_FLAG, self.evaluate_flag),
            web.post(EVERY_FLAG, self.evaluate_flags),
        ]

    def admits(self, token: str | None) -> bool:
        """Whether a credential may evaluate at all: the fast path's check at the head."""
        return self.credentials.sdk_key_environment(token) is not None

    def shed(self, key: str | None) -> web.Response:
        """The 429 of a shed request: `Retry-After` and the OFREP error body, nothing read."""
        return web.Response(
            body=shed_body(key), status=429, content_type="application/json", headers=SHED_HEADERS
        )

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
        if self.overload.sheds(ONE_FLAG):
            return self.shed(key)
        environment = self.credentials.sdk_environment(request)
        if environment is None:
            return refused(self.credentials, request, key)
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
        A shed request is answered 429 first, before the body is decoded.
        """
        started = _perf_counter()
        if self.overload.sheds(ONE_FLAG):
            return 429, shed_body(key)  # the fast path adds `Retry-After` to every 429
        environment = self.credentials.admitted_environment(token)  # one object per connection
        if environment is None or not self.ready.is_set():
            return None
        context = self.contexts(raw)
        if not isinstance(context, dict):
            return None
        # `answer_flag` through the evaluator's one-flag shortcut, each pre-built outcome
        # counted and encoded in its tally: every call saved here is a measurable share of
        # the answer's CPU (benchmarks/bench_ofrep_path.py).
        answer = self.evaluator.answer(
            environment, key, context, _time(), self.tallies, encode_resolution
        )
        self.latency.observe(_perf_counter() - started)
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

    def caught_up(self, environment: str, wanted: str | None) -> bool:
        """Whether this worker has applied the version a re-fetch names (or it names none)."""
        target = version_target(wanted)
        return target is None or self.flags.environment_seq(environment) >= target

    async def catch_up(self, environment: str, wanted: str | None) -> None:
        """Wait (bounded) until this worker has applied the version an SSE event announced.

        The event may come from another worker than the one answering the re-fetch.
        """
        target = version_target(wanted)
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
        if self.overload.sheds(EVERY_FLAG):
            return self.shed(None)
        environment = self.credentials.sdk_environment(request)
        if environment is None:
            return refused(self.credentials, request, None)
        context = await self.read_context(request, None)
        if isinstance(context, web.Response):
            return context
        if not self.replication.ready.is_set() and (unready := await self.not_ready(None)):
            return unready
        await self.catch_up(environment, request.query.get(VERSION_PARAMETER))
        etag = self.bulk_etag(environment, context)
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        await self.live_flags.compiled(environment)  # mid-compile: a slice per loop turn
        response = web.Response(
            body=self.every_flag(environment, context),
            status=200,
            content_type="application/json",
            headers={"ETag": etag},
        )
        self.stats.observe("ofrep_bulk", _perf_counter() - started)
        return response

    def evaluate_flags_at_once(
        self, token: str | None, if_none_match: str | None, query: bytes, raw: bytes
    ) -> tuple[int, bytes, str | None] | None:
        """`evaluate_flags`'s answer (status, body, ETag) when it needs no wait and the
        request itself is right: the fast path's `BulkAnswer` (`app.web.fast_path`).

        A shed request is answered 429 first, before the body is decoded: what a spike of
        bulk requests costs is then the fast path's framing, not aiohttp's request handling
        (~4x more: benchmarks/bench_spike.py). None, before any side effect, leaves the
        request to `evaluate_flags`: a missing or wrong key, a body that is not a context, a
        worker still recovering, a re-fetch naming a version not yet applied, or an
        environment still compiling: each of those answers (or waits) in one place.
        """
        started = _perf_counter()
        if self.overload.sheds(EVERY_FLAG):
            return 429, shed_body(None), None  # the fast path adds `Retry-After`
        environment = self.credentials.admitted_environment(token)
        if environment is None or not self.ready.is_set():
            return None
        context = parse_context(raw)
        if not isinstance(context, dict):
            return None
        if query and not self.caught_up(environment, version_asked(query)):
            return None
        etag = self.bulk_etag(environment, context)
        if if_none_match == etag:
            return 304, b"", etag
        # A `dict` is compiled whole; a view (`LiveFlags.environment`) compiles as it is read,
        # which `evaluate_flags` spreads over loop turns instead.
        if not isinstance(self.live_flags.environment(environment), dict):
            return None
        body = self.every_flag(environment, context)
        self.stats.observe("ofrep_bulk", _perf_counter() - started)
        return 200, body, etag

    def every_flag(self, environment: str, context: Mapping[str, Any]) -> bytes:
        """The 200 body of a bulk evaluation: every flag evaluated (counted, exposed)."""
        evaluated = self.evaluator.many(environment, None, context, _time(), "ofrep")
        flags = [resolution_body(key, resolution)[1] for key, _, resolution in evaluated]
        return dumps({"flags": flags, "eventStreams": EVENT_STREAMS})


def version_target(wanted: str | None) -> int | None:
    """The environment version a `flagConfigEtag` names (None: none, or not a version)."""
    return inputs.parse_version(None if wanted is None else wanted.strip('"'))


def version_asked(query: bytes) -> str | None:
    """The `flagConfigEtag` of a raw query string, as aiohttp's `request.query` reads it."""
    text = query.decode("utf-8", "surrogateescape")
    for name, value in parse_qsl(text, keep_blank_values=True):
        if name == VERSION_PARAMETER:
            return value
    return None
