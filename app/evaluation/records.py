"""Evaluation over Kafka: the request and result records and their JSON forms.

`decode_requests` turns the untrusted bytes of an `evaluation-requests` record into requests,
without Kafka, so the agent is a thin loop and every way a request can be wrong is tested as
data. A record that cannot be read at all is a `Rejection` (a dead letter, nobody to answer);
a request that can be read but not evaluated is an `Invalid` item (an error result addressed
to its `request_id`, plus a dead letter for the record). In a batch, each item stands alone.
docs/topics.md documents the forms ("Evaluation requests and results").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from app.engine import JsonObject, Resolution
from app.evaluation.live_flags import LiveFlag
from app.infra.json_input import Unacceptable, parse_json
from app.infra.keys import KEY_PATTERN
from app.infra.records import JSON, SCHEMA_VERSION, DeadLetterCode, Rejection, dumps, loads

__all__ = [
    "MAX_BATCH",
    "MAX_REQUEST_ID_CHARS",
    "REPLY_NAME_PATTERN",
    "RESULT_RECORD_BYTES",
    "TOO_LARGE",
    "EvaluationResult",
    "FlagResult",
    "Invalid",
    "Request",
    "RequestRefusedError",
    "Requests",
    "decode_requests",
    "decode_results",
    "encode_requests",
    "encode_results",
    "error_json",
    "flag_json",
    "result_json",
    "too_large",
    "valid_reply_topic",
]

# A worker writes results only to its `<prefix>.evaluation-results` or a topic under it:
# a reply topic is chosen by whoever can produce a request, and without this bound anyone who
# may produce requests could make every worker write into `flag-changes`, `flags-changelog`,
# `dead-letters` or `exposures` (forged control-plane records) or create topics at will on a
# broker that auto-creates them. Grant the workers write access to that prefix only.
REPLY_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,200}$")  # the <name> of results.<name>
MAX_REQUEST_ID_CHARS = 200
MAX_BATCH = 10_000  # requests per record; a bigger batch is refused as a whole
# Largest result record value: under Kafka's default message limit (1 MiB) with room for
# the key and the record overhead.
RESULT_RECORD_BYTES: Final = 900_000
TOO_LARGE: Final = "TOO_LARGE"  # error code of a result larger than RESULT_RECORD_BYTES


@dataclass(frozen=True, slots=True)
class Request:
    """One evaluation request: a context and the flags it asks for (None: every flag)."""

    request_id: str
    environment: str
    flags: list[str] | None
    context: JsonObject


@dataclass(frozen=True, slots=True)
class Invalid:
    """A request that cannot be evaluated; answered with an error when it has an id."""

    request_id: str | None
    environment: str | None
    problems: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Requests:
    """A decoded record: its items in order, whether it was a batch, and where to answer."""

    items: list[Request | Invalid]
    batch: bool
    reply_to: str

    @property
    def problems(self) -> tuple[tuple[str, str], ...]:
        """Every problem of every invalid item (for the record's dead letter)."""
        return tuple(p for item in self.items if isinstance(item, Invalid) for p in item.problems)


def valid_reply_topic(topic: str, results_topic: str) -> bool:
    """Whether a request may ask for its results on `topic`: the deployment's results topic
    (`<prefix>.evaluation-results`) or `<that>.<name>` (see REPLY_NAME_PATTERN)."""
    if topic == results_topic:
        return True
    head, dot, name = topic.rpartition(".")
    return head == results_topic and bool(dot) and REPLY_NAME_PATTERN.match(name) is not None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _decode_item(data: Any, path: str) -> Request | Invalid:
    """One request object; `path` is its JSON path in the record, for the problems."""
    if not isinstance(data, dict):
        return Invalid(None, None, ((path, "a request must be a JSON object"),))
    problems: list[tuple[str, str]] = []
    request_id = _text(data.get("request_id"))
    if request_id is None or len(request_id) > MAX_REQUEST_ID_CHARS:
        problems.append((f"{path}.request_id", f"must be a string of 1 to {MAX_REQUEST_ID_CHARS}"))
        request_id = None
    environment = _text(data.get("environment"))
    if environment is None or KEY_PATTERN.fullmatch(environment) is None:
        problems.append((f"{path}.environment", f"must match {KEY_PATTERN.pattern}"))
        environment = None
    flags = data.get("flags")
    if flags is not None and not (
        isinstance(flags, list) and all(isinstance(key, str) and key for key in flags)
    ):
        problems.append((f"{path}.flags", "must be a list of flag keys, or null for every flag"))
    context = data.get("context", {})
    if not isinstance(context, dict):
        problems.append((f"{path}.context", "must be a JSON object"))
    if problems or request_id is None or environment is None:
        return Invalid(request_id, environment, tuple(problems))
    return Request(request_id, environment, flags, context)


def _reply_to(
    data: JsonObject, path: str, results_topic: str
) -> tuple[str | None, tuple[str, str] | None]:
    """The record's reply topic (None: absent), or the problem with it."""
    reply_to = data.get("reply_to")
    if reply_to is None:
        return None, None
    if isinstance(reply_to, str) and valid_reply_topic(reply_to, results_topic):
        return reply_to, None
    allowed = f"{results_topic} or {results_topic}.<name> ({REPLY_NAME_PATTERN.pattern})"
    return None, (f"{path}.reply_to", f"must be null, {allowed}")


def decode_requests(raw: bytes | None, results_topic: str) -> Requests | Rejection:
    """Turn the bytes of an `evaluation-requests` record into requests, or say what is wrong.

    A batch item's `reply_to`, when present, must equal the batch's: one record in is one
    record out, so a batch has one destination. `results_topic`: the deployment's
    `evaluation-results` (`Topics.evaluation_results`), where results go by default.
    """
    if not raw:
        return Rejection.malformed("empty record")
    data: Any = parse_json(raw)  # strict and depth-bounded, as every HTTP body
    if isinstance(data, Unacceptable):
        return Rejection.malformed(data.message)
    if not isinstance(data, dict):
        return Rejection.malformed("a request record must be a JSON object")
    if data.get("schema") != SCHEMA_VERSION:
        schema = data.get("schema")
        return Rejection.malformed(f"unknown schema {schema!r}", ("$.schema", "must be 1"))
    if "requests" not in data:
        reply_to, problem = _reply_to(data, "$", results_topic)
        item = _decode_item(data, "$")
        if problem is not None:
            item = _with_problem(item, problem)
        return Requests([item], batch=False, reply_to=reply_to or results_topic)
    batch = data["requests"]
    if not isinstance(batch, list) or not batch or len(batch) > MAX_BATCH:
        return Rejection.malformed(
            "bad batch", ("$.requests", f"must be a list of 1 to {MAX_BATCH} request objects")
        )
    reply_to, problem = _reply_to(data, "$", results_topic)
    items: list[Request | Invalid] = []
    for index, entry in enumerate(batch):
        path = f"$.requests[{index}]"
        item = _decode_item(entry, path)
        if problem is not None:
            item = _with_problem(item, problem)
        elif isinstance(entry, dict) and entry.get("reply_to", reply_to) != reply_to:
            item = _with_problem(item, (f"{path}.reply_to", "must be absent or the batch's"))
        items.append(item)
    return Requests(items, batch=True, reply_to=reply_to or results_topic)


def _with_problem(item: Request | Invalid, problem: tuple[str, str]) -> Invalid:
    if isinstance(item, Request):
        return Invalid(item.request_id, item.environment, (problem,))
    return Invalid(item.request_id, item.environment, (*item.problems, problem))


# -- results ------------------------------------------------------------------------------


def flag_json(key: str, live: LiveFlag | None, resolution: Resolution) -> JSON:
    """One flag's outcome in a result (OpenFeature's resolution details, plus its version)."""
    return {
        "key": key,
        "value": resolution.value,
        "variant": resolution.variant,
        "reason": resolution.reason.value,
        "error_code": resolution.error_code.value if resolution.error_code else None,
        "error_message": resolution.error_message,
        "flag_version": live.version if live is not None else None,
    }


def result_json(request: Request, flags: list[JSON], evaluated_at: float) -> JSON:
    """The answer to one request that was evaluated."""
    return {
        "request_id": request.request_id,
        "environment": request.environment,
        "flags": flags,
        "evaluated_at": evaluated_at,
        "error": None,
    }


def error_json(item: Invalid, evaluated_at: float) -> JSON:
    """The answer to one request that could not be evaluated."""
    return {
        "request_id": item.request_id,
        "environment": item.environment,
        "flags": [],
        "evaluated_at": evaluated_at,
        "error": {
            "code": DeadLetterCode.MALFORMED.value,
            "message": "the request is malformed",
            "problems": [{"path": p, "message": m} for p, m in item.problems],
        },
    }


def encode_results(results: list[JSON], batch: bool) -> list[bytes]:
    """The values of the result records: one result, or a batch in the requests' order.

    Each value stays under `RESULT_RECORD_BYTES`, below Kafka's default 1 MiB message limit
    (a batch of 10,000 requests for every flag can be far larger): a batch is split into
    several batch records of consecutive results, and a single result that alone is too
    large is replaced by a `TOO_LARGE` error result, so every request is still answered.
    """
    if not batch:
        value = dumps({"schema": SCHEMA_VERSION, **results[0]})
        if len(value) <= RESULT_RECORD_BYTES:
            return [value]
        return [dumps({"schema": SCHEMA_VERSION, **too_large(results[0])})]
    value = dumps({"schema": SCHEMA_VERSION, "results": results})
    if len(value) <= RESULT_RECORD_BYTES:
        return [value]
    if len(results) == 1:
        return [dumps({"schema": SCHEMA_VERSION, "results": [too_large(results[0])]})]
    half = len(results) // 2
    return encode_results(results[:half], True) + encode_results(results[half:], True)


def too_large(result: JSON) -> JSON:
    """The error result standing in for a result larger than a record may be."""
    return {
        **result,
        "flags": [],
        "error": {
            "code": TOO_LARGE,
            "message": f"the result exceeds {RESULT_RECORD_BYTES} bytes: ask for fewer flags",
            "problems": [],
        },
    }


def encode_requests(
    requests: Sequence[tuple[str, str, JsonObject, list[str] | None]],
    reply_to: str | None = None,
) -> bytes:
    """A request record from (request_id, environment, context, flags); a batch when >1."""
    items: list[JSON] = [
        {"request_id": rid, "environment": env, "flags": flags, "context": context}
        for rid, env, context, flags in requests
    ]
    if len(items) == 1:
        return dumps({"schema": SCHEMA_VERSION, **items[0], "reply_to": reply_to})
    return dumps({"schema": SCHEMA_VERSION, "requests": items, "reply_to": reply_to})


# -- results, read back by a client -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlagResult:
    """One flag's outcome as a client reads it."""

    key: str
    value: Any
    variant: str | None
    reason: str
    error_code: str | None
    error_message: str | None
    flag_version: int | None


@dataclass(frozen=True, slots=True)
class EvaluationResult:
    """The answer to one request; `error` is set (and `flags` empty) when it was refused."""

    request_id: str
    environment: str | None
    flags: dict[str, FlagResult]
    evaluated_at: float
    error: JSON | None

    def raise_for_error(self) -> EvaluationResult:
        """Turn a refused request into an exception, for callers that prefer one."""
        if self.error is not None:
            raise RequestRefusedError(self.request_id, self.error)
        return self


class RequestRefusedError(Exception):
    """A worker answered a request with an error (a malformed request)."""

    def __init__(self, request_id: str, error: JSON) -> None:
        super().__init__(f"request {request_id} refused: {error.get('problems')}")
        self.request_id = request_id
        self.error = error


def decode_results(raw: bytes) -> list[EvaluationResult]:
    """The results in a result record (one, or a batch); [] for a record we cannot read.

    Results without a request id (a batch item the worker could not identify) are skipped:
    no caller can be waiting for them.
    """
    try:
        data = loads(raw)
        entries = data.get("results", [data])
        return [
            EvaluationResult(
                request_id=entry["request_id"],
                environment=entry.get("environment"),
                flags={f["key"]: FlagResult(**f) for f in entry.get("flags") or []},
                evaluated_at=float(entry.get("evaluated_at") or 0.0),
                error=entry.get("error"),
            )
            for entry in entries
            if isinstance(entry, dict) and isinstance(entry.get("request_id"), str)
        ]
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return []
