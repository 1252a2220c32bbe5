"""OFREP over HTTP against a real worker, every response checked against the OpenAPI document.

The document is `../shared/conformance/ofrep/openapi.yaml` (OFREP 0.3.0), read as is; two
errata of that version are patched in memory before validating (see `spec`). Without that
conformance data the behaviour tests still run, their answers unchecked against the document,
and the tests of the document itself skip (`test_the_published_schema_rejects_every_value`
says which data is absent).
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from app.engine import compile_flag, evaluate
from tests.conftest import ADMIN_TOKEN, READ_TOKEN, REPO, SDK_KEY, EventStream, Worker, flag

SPEC = REPO.parent / "shared" / "conformance" / "ofrep" / "openapi.yaml"
OTHER_KEY = "test-sdk-key-staging"  # selects `staging`
BULK_KEY = "test-sdk-key-bulk"  # selects `bulk`, which only the bulk tests write to
MAX_BODY = 4096
SINGLE = "/ofrep/v1/evaluate/flags/"
BULK = "/ofrep/v1/evaluate/flags"

TARGETED = {
    "state": "ENABLED",
    "variants": {"on": True, "off": False},
    "defaultVariant": "off",
    "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on", "off"]},
}
SPLIT = {
    "state": "ENABLED",
    "variants": {"control": "control", "treatment": "treatment"},
    "defaultVariant": "control",
    "targeting": {"fractional": [["control", 50], ["treatment", 50]]},
}


ABSENT = f"OFREP conformance data is absent ({SPEC}): answers are not checked against it"


def published() -> dict[str, Any] | None:
    """The OFREP document as published, or None without the conformance data."""
    if not SPEC.exists():
        return None
    document: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    return document


@cache
def spec() -> dict[str, Any] | None:
    """The OpenAPI document, with the two errata of OFREP 0.3.0 corrected.

    1. `evaluationSuccess` picks the value's type with `oneOf`, but `codeDefaultFlag` is any
       object and `floatFlag` accepts integers, so every body with a value matches two
       branches and fails `oneOf` (`test_the_published_schema_rejects_every_value`). The
       intent (ADR-0006: "the oneOf discriminator") is one of these shapes: `anyOf`.
    2. The reason enum omits DEFAULT, which OpenFeature defines, flagd sends when targeting
       matches no rule, and ADR-0006's own example uses. We send DEFAULT rather than a
       reason that would misinform clients (STATIC invites caching across contexts).
    """
    document = published()
    if document is None:
        return None
    schemas = document["components"]["schemas"]
    typed = schemas["evaluationSuccess"]["allOf"][1]
    typed["anyOf"] = typed.pop("oneOf")
    schemas["evaluationSuccess"]["allOf"][0]["properties"]["reason"]["enum"].append("DEFAULT")
    return document


def validator(schema: str, document: dict[str, Any]) -> Draft202012Validator:
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:ofrep", resource)
    return Draft202012Validator(
        {"$ref": f"urn:ofrep#/components/schemas/{schema}"}, registry=registry
    )


def corrected() -> dict[str, Any]:
    """The corrected document, for a test that checks the document itself (skipped without)."""
    document = spec()
    if document is None:
        pytest.skip(ABSENT)
    return document


@cache
def validators(schema: str) -> Draft202012Validator | None:
    document = spec()
    return None if document is None else validator(schema, document)


def conforms(body: Any, schema: str) -> Any:
    """`body` if it is valid under `schema`; unchecked without the conformance data."""
    checker = validators(schema)
    if checker is None:
        return body
    errors = [e.message for e in checker.iter_errors(body)]
    assert not errors, f"{schema}: {errors} in {body}"
    return body


# Per path and status: the schema the OpenAPI document gives the response body.
SINGLE_SCHEMAS = {200: "serverEvaluationSuccess", 400: "evaluationFailure", 404: "flagNotFound"}
BULK_SCHEMAS = {200: "bulkEvaluationSuccess", 400: "bulkEvaluationFailure"}


class SpecReply:
    """An OFREP answer over http.client, its body already checked against the spec."""

    def __init__(self, status: int, headers: http.client.HTTPMessage, raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw
        self.body: Any = json.loads(raw) if raw else None


def post(
    worker: Worker,
    path: str,
    body: Any = None,
    *,
    key: str | None = SDK_KEY,
    scheme: str = "bearer",
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> SpecReply:
    """POST to the worker; the body is checked against the spec for the path and status."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        sent |= {"Authorization": f"Bearer {key}"} if scheme == "bearer" else {"X-API-Key": key}
    data = raw if raw is not None else json.dumps(body).encode()
    parsed = urllib.parse.urlsplit(worker.url + path)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        connection.request(
            "POST", parsed.path + (f"?{parsed.query}" if parsed.query else ""), data, sent
        )
        response = connection.getresponse()
        reply = SpecReply(response.status, response.headers, response.read())
    finally:
        connection.close()
    schemas = BULK_SCHEMAS if parsed.path == BULK else SINGLE_SCHEMAS
    if reply.status in schemas:
        conforms(reply.body, schemas[reply.status])
    elif reply.status == 413:  # not in the spec: the failure shape of the path
        conforms(reply.body, schemas[400])
    return reply


def evaluate_one(
    worker: Worker, flag_key: str, context: dict[str, Any], **kwargs: Any
) -> SpecReply:
    return post(worker, SINGLE + urllib.parse.quote(flag_key), {"context": context}, **kwargs)


def new_key() -> str:
    return "f-" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def worker(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A worker with three SDK keys (three environments) and a small body limit."""
    started = Worker(
        broker,
        tmp_path_factory.mktemp("ofrep") / "data",
        "flagstream-ofrep",
        FLAGSTREAM_SDK_KEYS=f"{SDK_KEY}=development,{OTHER_KEY}=staging,{BULK_KEY}=bulk",
        FLAGSTREAM_MAX_BODY_BYTES=str(MAX_BODY),
    ).start()
    yield started
    started.stop()


def test_the_published_schema_rejects_every_value() -> None:
    """Why `spec` corrects erratum 1: a plain boolean answer fails the published `oneOf`."""
    body = {"key": "k", "value": True, "reason": "STATIC", "variant": "on"}
    fixed = corrected()
    as_published = published()
    assert as_published is not None
    assert not validator("evaluationSuccess", as_published).is_valid(body)
    assert validator("evaluationSuccess", fixed).is_valid(body)


# -- one flag ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variants", "default", "value"),
    [
        ({"on": True, "off": False}, "on", True),
        ({"a": "alpha", "b": "beta"}, "b", "beta"),
        ({"one": 1, "two": 2}, "two", 2),
        ({"half": 0.5, "third": 0.33}, "half", 0.5),
        ({"cfg": {"limit": 3, "tags": ["x"]}, "none": {}}, "cfg", {"limit": 3, "tags": ["x"]}),
    ],
    ids=["boolean", "string", "integer", "float", "object"],
)
def test_a_static_flag_of_each_type(
    worker: Worker, variants: dict[str, Any], default: str, value: Any
) -> None:
    key = new_key()
    worker.admin().put(
        "development", key, {"state": "ENABLED", "variants": variants, "defaultVariant": default}
    )
    reply = evaluate_one(worker, key, {"targetingKey": "user-1"})
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.body == {
        "key": key,
        "value": value,
        "reason": "STATIC",
        "variant": default,
        "metadata": {},
    }
    assert type(reply.body["value"]) is type(value)


def test_targeting_matches_or_falls_back_to_the_default(worker: Worker) -> None:
    key = new_key()
    worker.admin().put("development", key, TARGETED)
    matched = evaluate_one(worker, key, {"targetingKey": "u", "email": "ann@example.com"})
    assert (matched.body["value"], matched.body["variant"], matched.body["reason"]) == (
        True,
        "on",
        "TARGETING_MATCH",
    )
    other = evaluate_one(worker, key, {"targetingKey": "u", "email": "bob@elsewhere.org"})
    assert (other.body["value"], other.body["variant"]) == (False, "off")


def test_fractional_splits_agree_with_the_engine(worker: Worker) -> None:
    key = new_key()
    worker.admin().put("development", key, SPLIT)
    compiled = compile_flag(key, SPLIT)
    assert not isinstance(compiled, list)
    seen = set()
    for n in range(40):
        context = {"targetingKey": f"user-{n}"}
        expected = evaluate(compiled, context, int(time.time()), key)
        body = evaluate_one(worker, key, context).body
        assert (body["variant"], body["value"], body["reason"]) == (
            expected.variant,
            expected.value,
            expected.reason,
        )
        seen.add(body["variant"])
    assert seen == {"control", "treatment"}


def test_metadata_is_returned(worker: Worker) -> None:
    key = new_key()
    worker.admin().put("development", key, flag(metadata={"team": "growth", "experiment": False}))
    body = evaluate_one(worker, key, {}).body
    assert body["metadata"] == {"team": "growth", "experiment": False}


def test_a_disabled_flag_defers_to_the_code_default(worker: Worker) -> None:
    key = new_key()
    worker.admin().put("development", key, flag(state="DISABLED"))
    reply = evaluate_one(worker, key, {"targetingKey": "u"})
    assert reply.status == 200
    # No value: the caller's default applies. `variant` "" is there for the Python provider.
    assert reply.body == {"key": key, "reason": "DISABLED", "variant": "", "metadata": {}}


def test_no_default_variant_and_no_match_defers_to_the_code_default(worker: Worker) -> None:
    key = new_key()
    only_on = {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on"]}
    worker.admin().put(
        "development", key, {**TARGETED, "defaultVariant": None, "targeting": only_on}
    )
    reply = evaluate_one(worker, key, {"targetingKey": "u", "email": "x@elsewhere.org"})
    assert reply.status == 200
    assert "value" not in reply.body and reply.body["variant"] == ""
    assert reply.body["reason"] == "DEFAULT"


def test_a_missing_flag_is_404(worker: Worker) -> None:
    reply = evaluate_one(worker, "no-such-flag", {"targetingKey": "u"})
    assert reply.status == 404
    assert reply.body["key"] == "no-such-flag"
    assert reply.body["errorCode"] == "FLAG_NOT_FOUND"


def test_an_evaluation_error_is_400_with_its_code(worker: Worker) -> None:
    key = new_key()
    worker.admin().put("development", key, flag(targeting={"if": [True, "nope", "off"]}))
    reply = evaluate_one(worker, key, {"targetingKey": "u"})
    assert reply.status == 400
    assert reply.body["key"] == key
    assert reply.body["errorCode"] == "GENERAL"
    assert "nope" in reply.body["errorDetails"]


# -- authentication and environments ------------------------------------------------------


def test_both_auth_schemes_select_the_environment(worker: Worker) -> None:
    key = new_key()
    worker.admin().put("development", key, flag(default="on"))
    for scheme in ("bearer", "api-key"):
        assert evaluate_one(worker, key, {}, scheme=scheme).body["value"] is True


# What a request without a usable SDK key gets (docs/ofrep.md, "Responses"): 401 and a
# challenge without a key or with an unknown one, 403 for a token that manages flags.
NO_SDK_KEY = (401, "an SDK key is required (Authorization: Bearer or X-API-Key)", "Bearer")
MANAGER_TOKEN = (403, "admin and read tokens do not evaluate flags: use an SDK key", None)
REFUSALS = pytest.mark.parametrize(
    ("token", "refusal"),
    [
        (None, NO_SDK_KEY),
        ("wrong-key", NO_SDK_KEY),
        (ADMIN_TOKEN, MANAGER_TOKEN),
        (READ_TOKEN, MANAGER_TOKEN),
    ],
    ids=["none", "unknown", "admin-token", "read-token"],
)


@REFUSALS
def test_only_an_sdk_key_evaluates(
    worker: Worker, token: str | None, refusal: tuple[int, str, str | None]
) -> None:
    status, details, challenge = refusal
    single = post(worker, SINGLE + "anything", {"context": {}}, key=token)
    bulk = post(worker, BULK, {"context": {}}, key=token)
    assert (single.status, single.body) == (status, {"key": "anything", "errorDetails": details})
    assert (bulk.status, bulk.body) == (status, {"errorDetails": details})
    for reply in (single, bulk):
        assert reply.headers.get("WWW-Authenticate") == challenge


def test_a_key_reads_only_its_own_environment(worker: Worker) -> None:
    key = new_key()
    worker.admin().put("staging", key, flag(default="on"))
    assert evaluate_one(worker, key, {}, key=OTHER_KEY).body["value"] is True
    assert evaluate_one(worker, key, {}, key=SDK_KEY).status == 404
    staging = post(worker, BULK, {"context": {}}, key=OTHER_KEY).body["flags"]
    development = post(worker, BULK, {"context": {}}, key=SDK_KEY).body["flags"]
    assert key in {item["key"] for item in staging}
    assert key not in {item["key"] for item in development}


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "PARSE_ERROR"),
        (b"\xff\xfe", "PARSE_ERROR"),
        (b"[1, 2]", "INVALID_CONTEXT"),
        (b'{"context": "user-1"}', "INVALID_CONTEXT"),
        (b'{"context": {"targetingKey": 42}}', "INVALID_CONTEXT"),
    ],
    ids=["not-json", "not-utf8", "not-an-object", "context-not-an-object", "targeting-key"],
)
def test_a_bad_body_is_400(worker: Worker, raw: bytes, code: str) -> None:
    single = post(worker, SINGLE + "any-flag", raw=raw)
    assert (single.status, single.body["errorCode"], single.body["key"]) == (400, code, "any-flag")
    bulk = post(worker, BULK, raw=raw, key=BULK_KEY)
    assert (bulk.status, bulk.body["errorCode"]) == (400, code)


def test_an_oversize_body_is_413(worker: Worker) -> None:
    raw = json.dumps({"context": {"targetingKey": "u", "pad": "x" * MAX_BODY}}).encode()
    assert post(worker, SINGLE + "any-flag", raw=raw).status == 413
    assert post(worker, BULK, raw=raw, key=BULK_KEY).status == 413


def nested_context(depth: int) -> bytes:
    """A request body whose context holds a value `depth` arrays deep (no recursive dumps)."""
    return b'{"context": {"targetingKey": "u", "deep": %s"leaf"%s}}' % (b"[" * depth, b"]" * depth)


def test_a_context_nested_too_deep_is_400(worker: Worker) -> None:
    """Was a 500 on bulk: `bulk_etag` hashes the context with a recursive `json.dumps`."""
    deep = nested_context(980)
    assert len(deep) < MAX_BODY
    bulk = post(worker, BULK, raw=deep, key=BULK_KEY)
    assert (bulk.status, bulk.body["errorCode"]) == (400, "INVALID_CONTEXT")
    assert "nested deeper than 64 levels" in bulk.body["errorDetails"]
    single = post(worker, SINGLE + "any-flag", raw=deep)
    assert (single.status, single.body["errorCode"]) == (400, "INVALID_CONTEXT")
    within = nested_context(60)
    assert post(worker, BULK, raw=within, key=BULK_KEY).status == 200


@pytest.mark.parametrize(
    "etag", ["%C2%B2", "%22%C2%B2%22", "9" * 5000, "-1", ""], ids=lambda e: e[:12] or "empty"
)
def test_a_flag_config_etag_that_is_no_version_is_ignored(worker: Worker, etag: str) -> None:
    """`?flagConfigEtag=²` (str.isdigit, then int) and 5000 digits (int's limit) were 500s."""
    reply = post(worker, BULK + f"?flagConfigEtag={etag}", {"context": {}}, key=BULK_KEY)
    assert reply.status == 200


def test_no_body_or_no_context_is_the_empty_context(worker: Worker) -> None:
    key = new_key()
    worker.admin().put("development", key, flag(default="on"))
    assert post(worker, SINGLE + key, raw=b"").body["value"] is True
    assert post(worker, SINGLE + key, {}).body["value"] is True


# -- bulk --------------------------------------------------------------------------------


def test_bulk_evaluates_every_flag_with_per_flag_errors(worker: Worker) -> None:
    admin = worker.admin()
    admin.put("bulk", "targeted", TARGETED)
    admin.put("bulk", "broken", flag(targeting={"if": [True, "nope", "off"]}))
    admin.put("bulk", "disabled", flag(state="DISABLED"))
    reply = post(
        worker, BULK, {"context": {"targetingKey": "u", "email": "a@example.com"}}, key=BULK_KEY
    )
    assert reply.status == 200
    flags = {item["key"]: item for item in reply.body["flags"]}
    assert flags["targeted"]["variant"] == "on"
    assert flags["broken"]["errorCode"] == "GENERAL"
    assert flags["disabled"] == {
        "key": "disabled",
        "reason": "DISABLED",
        "variant": "",
        "metadata": {},
    }
    assert reply.body["eventStreams"] == [
        {"type": "sse", "endpoint": {"requestUri": "/ofrep/v1/events"}, "inactivityDelaySec": 120}
    ]


def test_bulk_is_304_until_a_flag_or_the_context_changes(worker: Worker) -> None:
    context = {"context": {"targetingKey": "u", "email": "a@example.com"}}
    first = post(worker, BULK, context, key=BULK_KEY)
    etag = first.headers["ETag"]
    again = post(worker, BULK, context, key=BULK_KEY, headers={"If-None-Match": etag})
    assert (again.status, again.raw, again.headers["ETag"]) == (304, b"", etag)
    other_context = {"context": {"targetingKey": "v", "email": "a@example.com"}}
    moved = post(worker, BULK, other_context, key=BULK_KEY, headers={"If-None-Match": etag})
    assert moved.status == 200 and moved.headers["ETag"] != etag
    worker.admin().put("bulk", new_key(), flag())
    changed = post(worker, BULK, context, key=BULK_KEY, headers={"If-None-Match": etag})
    assert changed.status == 200 and changed.headers["ETag"] != etag


# -- change notifications ----------------------------------------------------------------


def events_url(worker: Worker) -> str:
    return worker.url + "/ofrep/v1/events"


def test_a_change_notifies_the_key_environment_only(worker: Worker) -> None:
    events = EventStream(events_url(worker), token=SDK_KEY)
    try:
        worker.admin().put("staging", new_key(), flag())  # another environment: no event
        applied = worker.admin().put("development", new_key(), flag())
        seq, kind, data = events.next()
        assert (seq, kind) == (applied["seq"], "message")
        conforms(data, "sseEventData")
        assert data["type"] == "refetchEvaluation"
        assert data["etag"] == f'"{applied["seq"]}"'
        assert abs(data["lastModified"] - time.time()) < 60
        refetch = post(worker, BULK + f"?flagConfigEtag={urllib.parse.quote(data['etag'])}", {})
        assert refetch.status == 200
    finally:
        events.close()


def test_a_client_that_missed_changes_is_told_at_once(worker: Worker) -> None:
    applied = worker.admin().put("development", new_key(), flag())
    events = EventStream(events_url(worker), token=SDK_KEY, last_event_id=applied["seq"] - 1)
    try:
        seq, kind, data = events.next()
        assert (seq, kind, data["type"]) == (applied["seq"], "message", "refetchEvaluation")
    finally:
        events.close()


def test_notifications_end_at_the_latest_change(worker: Worker) -> None:
    events = EventStream(events_url(worker), token=SDK_KEY)
    try:
        applied = [worker.admin().put("development", new_key(), flag()) for _ in range(3)]
        last = applied[-1]["seq"]
        ids = []
        while not ids or ids[-1] < last:
            seq, _, data = events.next()
            assert data["etag"] == f'"{seq}"'
            ids.append(seq)
        assert ids == sorted(ids) and ids[-1] == last and len(ids) <= 3
    finally:
        events.close()


@pytest.mark.parametrize("last_event_id", ["²", "9" * 5000])
def test_a_last_event_id_that_is_no_sequence_starts_a_fresh_stream(
    worker: Worker, last_event_id: str
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {SDK_KEY}", "Last-Event-ID": last_event_id.encode()}
        connection.request("GET", "/ofrep/v1/events", headers=headers)
        response = connection.getresponse()
        assert response.status == 200
        assert response.readline() == b": connected\n"
    finally:
        connection.close()


@REFUSALS
def test_the_notification_stream_needs_an_sdk_key(
    worker: Worker, token: str | None, refusal: tuple[int, str, str | None]
) -> None:
    """Was `pytest.raises(AssertionError)` around `EventStream`: any answer but 200 passed."""
    status, details, challenge = refusal
    headers = {"Accept": "text/event-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    connection = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=10)
    try:
        connection.request("GET", "/ofrep/v1/events", headers=headers)
        response = connection.getresponse()
        assert (response.status, json.loads(response.read())) == (status, {"errorDetails": details})
        assert response.headers.get("WWW-Authenticate") == challenge
    finally:
        connection.close()


def test_evaluations_are_counted(worker: Worker) -> None:
    key = new_key()
    worker.admin().put("development", key, flag())
    evaluate_one(worker, key, {})
    text = worker.metrics()
    labels = f'environment="development",flag="{key}",path="ofrep",reason="STATIC",variant="off"'
    assert f"flagstream_evaluations_total{{{labels}}} 1.0" in text
    assert 'flagstream_evaluation_latency_seconds_count{path="ofrep"}' in text


def test_a_change_is_served_at_once(worker: Worker) -> None:
    key = new_key()
    worker.admin().put("development", key, flag(default="off"))
    assert evaluate_one(worker, key, {}).body["value"] is False
    worker.admin().put("development", key, flag(default="on"))
    assert evaluate_one(worker, key, {}).body["value"] is True
    worker.admin().delete("development", key)
    assert evaluate_one(worker, key, {}).status == 404
