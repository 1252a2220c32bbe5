"""OFREP's bodies: how a resolution, a refusal and a bad request read on the wire, and what a
request body must be to be an evaluation context (OFREP 0.3.0, `service/openapi.yaml`).

The one place a `Resolution` becomes an HTTP status and body, for the single-flag and bulk
routes and for the fast path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson
from aiohttp import web

from app.engine import ErrorCode, JsonObject, Resolution
from app.infra.json_input import MAX_DEPTH
from app.infra.records import dumps, loads
from app.web import inputs
from app.web.auth import Access, Credentials, bearer

__all__ = [
    "PREFIX",
    "ContextRefusal",
    "Contexts",
    "EncodedBodies",
    "bad_request",
    "encode_resolution",
    "parse_context",
    "refused",
    "resolution_body",
    "respond",
]

PREFIX: Final = "/ofrep/v1"
# Bodies this long or shorter nest at most MAX_DEPTH deep (each level costs two bytes, "[]").
SHALLOW_BYTES: Final = 2 * MAX_DEPTH
_loads = loads  # bound once: the hot path's one parse
# Encoded single-flag bodies kept (see `EncodedBodies`): a few per flag version.
BODY_CACHE_SIZE: Final = 8192
# Parsed request bodies kept (see `Contexts`), and the longest body kept: at most
# CONTEXT_CACHE_SIZE * CONTEXT_CACHE_BYTES (4 MiB) of bodies, whatever clients send.
CONTEXT_CACHE_SIZE: Final = 4096
CONTEXT_CACHE_BYTES: Final = 1024

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


def encode_resolution(key: str, resolution: Resolution) -> tuple[int, bytes]:
    """`resolution_body` as the status and the bytes sent."""
    status, body = resolution_body(key, resolution)
    return status, dumps(body)


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
        status, raw = encode_resolution(key, resolution)
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
    body = _decoded(raw)
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


class Contexts:
    """`parse_context`, remembered by the body's bytes: the fast path's parse.

    A server-side SDK sends the same body for every flag it evaluates for one user (OFREP
    has one request per flag), so most bodies were parsed moments before: a hit is a hash of
    the bytes and a dict lookup instead of orjson's parse and the context checks (~1 µs of
    an answer's CPU, benchmarks/RESULTS.md). Only bodies that are contexts and at most
    CONTEXT_CACHE_BYTES long are kept, at most CONTEXT_CACHE_SIZE of them (emptied when
    full), so what a client can make it hold is bounded. The context handed out is shared:
    callers read it and never mutate it (the engine is pure; an exposure copies the
    targeting key).
    """

    __slots__ = ("_contexts", "size")

    def __init__(self, size: int = CONTEXT_CACHE_SIZE) -> None:
        self.size = size
        self._contexts: dict[bytes, JsonObject] = {}

    def __call__(self, raw: bytes) -> JsonObject | ContextRefusal:
        context = self._contexts.get(raw)
        if context is not None:
            return context
        parsed = parse_context(raw)
        if isinstance(parsed, dict) and len(raw) <= CONTEXT_CACHE_BYTES:
            if len(self._contexts) >= self.size:
                self._contexts.clear()
            self._contexts[raw] = parsed
        return parsed


def _decoded(raw: bytes) -> Any:
    """`inputs.decode_body(raw)`, in one call for the usual body of an evaluation: a short
    one parsed at once (it cannot nest too deep: `app.infra.json_input.parse_json` checks
    the depth of longer ones only), anything else, and every refusal, through `decode_body`."""
    if len(raw) <= SHALLOW_BYTES:
        try:
            return _loads(raw)
        except orjson.JSONDecodeError:
            pass  # decode_body says why
    return inputs.decode_body(raw)


def refused(credentials: Credentials, request: web.Request, key: str | None) -> web.Response:
    """401 without a known SDK key; 403 for an admin or read token (they do not evaluate)."""
    if credentials.access_of(bearer(request)) is not Access.NONE:
        status, details = 403, "admin and read tokens do not evaluate flags: use an SDK key"
        headers = None
    else:
        status, details = 401, "an SDK key is required (Authorization: Bearer or X-API-Key)"
        headers = {"WWW-Authenticate": "Bearer"}
    body: dict[str, Any] = {"errorDetails": details}
    if key is not None:
        body["key"] = key
    return respond(status, body, headers)
