"""docs/openapi.yaml is the whole HTTP API of a worker, and a live worker keeps to it.

* The routes a worker's aiohttp app registers are exactly the document's operations, read
  from the app a worker builds (`app.main` imported in a fresh interpreter, its web server
  initialised as `flagstream worker` does): a new route without a document entry fails.
* schemathesis fuzzes a live worker, every operation with each kind of caller (admin token,
  read token, SDK key, none) in both generation modes (valid and invalid requests): no 5xx,
  and every status, content type, header and body is one the document gives. OFREP answers
  are validated against the official OFREP document too (as `tests/web/test_ofrep.py` does).
* One request per operation that succeeds, so every documented 2xx/304 body is checked
  whatever the fuzz drew; every OFREP body shape is valid under our schemas and OFREP's.
* The server-sent-event routes, which never end, are opened with each credential and only
  their status, headers and error bodies checked.
* What the fuzz found has a test of its own below it.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ADMIN_TOKEN, READ_TOKEN, REPO, SDK_KEY, Worker, flag
from tests.web.test_ofrep import BULK, BULK_SCHEMAS, SINGLE_SCHEMAS, SPEC, conforms

DOCUMENT = REPO / "docs" / "openapi.yaml"
ENVIRONMENT = "development"  # the environment SDK_KEY selects (tests/conftest.py)
FLAGS = {
    "fuzz-on": flag("on"),
    "fuzz-split": flag(
        "off",
        targeting={"fractional": [["on", 50], ["off", 50]]},
        metadata={"experiment": True},
    ),
    "fuzz-disabled": flag("on", state="DISABLED"),
    "fuzz-no-default": {"state": "ENABLED", "variants": {"on": True, "off": False}},
    "fuzz-delete": flag("on"),
    "fuzz-state": flag("on"),
}
CREDENTIALS: dict[str, dict[str, str]] = {
    "admin": {"Authorization": f"Bearer {ADMIN_TOKEN}"},
    "read": {"Authorization": f"Bearer {READ_TOKEN}"},
    "sdk": {"Authorization": f"Bearer {SDK_KEY}"},
    "sdk-x-api-key": {"X-API-Key": SDK_KEY},
    "none": {},
}
# X-API-Key is the same check as a bearer SDK key (app.web.auth.token_of): the successes
# below send it; the fuzz spends its time on the four kinds of caller.
FUZZED_CREDENTIALS = ("admin", "read", "sdk", "none")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Examples per operation, credential and generation mode (24 operations x 4 x 2): the fuzz
# stays near a minute on a loaded 2-core machine; FLAGSTREAM_FUZZ_EXAMPLES=50 explores further.
EXAMPLES = int(os.environ.get("FLAGSTREAM_FUZZ_EXAMPLES", "3"))
MAX_BODY = 16384


@cache
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text())
    return loaded


def documented_routes() -> set[tuple[str, str]]:
    methods = {"get", "put", "post", "delete", "head", "patch", "options"}
    return {
        (method.upper(), path)
        for path, item in document()["paths"].items()
        for method in item
        if method in methods
    }


ROUTES_OF_A_WORKER = """
import json
from app.infra.settings import Settings
from app.main import build
app = build(Settings.from_env()).app
app.web.init_server()  # what `flagstream worker` does before serving
routes = app.web.web_app.router.routes()
print(json.dumps(sorted({(r.method, r.resource.canonical) for r in routes if r.resource})))
"""


def worker_routes(data_dir: Path) -> set[tuple[str, str]]:
    """(method, path template) of every route a worker's aiohttp app registers."""
    env = {**os.environ, "FLAGSTREAM_DATA_DIR": str(data_dir)}
    out = subprocess.run(
        [sys.executable, "-c", ROUTES_OF_A_WORKER],
        env=env,
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    return {(method, path) for method, path in json.loads(out.splitlines()[-1])}


def test_every_route_of_a_worker_is_documented_and_nothing_else(tmp_path: Path) -> None:
    served = worker_routes(tmp_path / "data")
    documented = documented_routes()
    assert served - documented == set(), "routes the document lacks"
    assert documented - served == set(), "documented routes no worker serves"


def test_the_document_loads_as_openapi_with_an_operation_per_route() -> None:
    schema = schemathesis.openapi.from_dict(document())
    labels = {operation.ok().label for operation in schema.get_all_operations()}
    assert labels == {f"{method} {path}" for method, path in documented_routes()}


@pytest.fixture(scope="module")
def worker(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A worker with a small body limit (413 is reachable) and flags in every state."""
    started = Worker(
        broker,
        tmp_path_factory.mktemp("openapi") / "data",
        "flagstream-openapi",
        FLAGSTREAM_MAX_BODY_BYTES=str(MAX_BODY),
    ).start()
    admin = started.admin()
    for key, definition in FLAGS.items():
        admin.put(ENVIRONMENT, key, definition)
    yield started
    started.stop()


def negatable(item: dict[str, Any], method: str) -> bool:
    """Whether the document makes any request of the operation invalid. One without a body or
    credentials whose every parameter is a free string in the path (`/ui/{file}`, `/healthz`)
    has none: hypothesis spends seconds of draws on each `/ui/` one to say Unsatisfiable."""
    operation = item[method]
    parameters = item.get("parameters", []) + operation.get("parameters", [])
    free = all(p.get("in") == "path" and p.get("schema") == {"type": "string"} for p in parameters)
    return "requestBody" in operation or "security" in operation or not free


def is_stream(path: str) -> bool:
    """The server-sent-event routes: their answers never end, so they are not fuzzed."""
    return path.endswith(("/stream", "/events"))


def official_ofrep_check(path: str, status: int, body: bytes) -> None:
    """OFREP answers validate against the official OFREP document too (patched as in
    tests/web/test_ofrep.py); the 413s against the failure shape of their path."""
    if not SPEC.exists():
        return
    schemas = BULK_SCHEMAS if path == BULK else SINGLE_SCHEMAS
    schema = schemas.get(status) or (schemas[400] if status == 413 else None)
    if schema is not None:
        conforms(json.loads(body), schema)


def with_credential(case: Case, credential: str) -> Case:
    """The case with exactly `credential`: generated credentials are replaced or dropped."""
    headers = {
        name: value
        for name, value in (case.headers or {}).items()
        if name.lower() not in ("authorization", "x-api-key")
    }
    case.headers = {**headers, **CREDENTIALS[credential]}
    return case


WRITES = frozenset({"PUT", "DELETE", "POST"})
ADMIN_PREFIX = "/api/v1/environments/"


# The flag each write names when fuzzing reaches for what exists: one per write, so a fuzzed
# DELETE leaves the flags that reads and evaluations name.
WRITTEN = {"PUT": "fuzz-put", "DELETE": "fuzz-delete", "POST": "fuzz-state"}


def known_paths(method: str, path: str) -> dict[str, str]:
    """Path parameters that name what exists, so fuzzing reaches the 200s too."""
    known = {}
    if "{env}" in path:
        known["env"] = ENVIRONMENT
    if "{key}" in path:
        admin_write = path.startswith(ADMIN_PREFIX) and method in WRITES
        known["key"] = WRITTEN[method] if admin_write else "fuzz-on"
    return known


def fuzz(
    worker: Worker,
    operation: Any,
    mode: GenerationMode,
    credential: str,
    observe: Callable[[Case, Any], None],
) -> None:
    """`EXAMPLES` requests of `operation` in `mode` as `credential`, each checked (`CHECKS`)."""
    cases = operation.as_strategy(mode)
    if known := known_paths(operation.method.upper(), operation.path):
        cases = st.one_of(cases, operation.as_strategy(mode, path_parameters=known))
    session = requests.Session()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=os.environ.get("HYPOTHESIS_PROFILE") != "explore",  # as conftest's
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def run(case: Case) -> None:
        case = with_credential(case, credential)
        response = case.call_and_validate(
            base_url=worker.url, session=session, checks=CHECKS, timeout=30
        )
        observe(case, response)

    try:
        run()
    except Unsatisfiable:
        # No parameter or body to make invalid (e.g. `GET /healthz`): nothing negative to send.
        assert mode is GenerationMode.NEGATIVE, f"{operation.label}: no valid request"
    finally:
        session.close()


def operations() -> list[Any]:
    schema = schemathesis.openapi.from_dict(document())
    found = [result.ok() for result in schema.get_all_operations()]
    return [op for op in found if not is_stream(op.path)]


def test_a_live_worker_answers_every_fuzzed_request_as_documented(worker: Worker) -> None:
    statuses: dict[str, set[int]] = {}

    def observe(case: Case, response: Any) -> None:
        statuses.setdefault(case.operation.label, set()).add(response.status_code)
        if case.operation.path.startswith("/ofrep/") and response.content:
            official_ofrep_check(case.operation.path, response.status_code, response.content)

    started = time.monotonic()
    paths = document()["paths"]
    for operation in operations():
        modes = [GenerationMode.POSITIVE]
        if negatable(paths[operation.path], operation.method.lower()):
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            for credential in FUZZED_CREDENTIALS:
                fuzz(worker, operation, mode, credential, observe)
    elapsed = time.monotonic() - started
    print(f"fuzzed in {elapsed:.1f} s: {json.dumps({k: sorted(v) for k, v in statuses.items()})}")
    # The fuzz reached past the credential checks (`test_every_success_...` covers each 2xx).
    assert 200 in statuses["GET /api/v1/environments/{env}/flags/{key}"]
    assert 200 in statuses["POST /ofrep/v1/evaluate/flags"]


ADMIN, READ, SDK = CREDENTIALS["admin"], CREDENTIALS["read"], CREDENTIALS["sdk"]
CONTEXT = {"context": {"targetingKey": "user-1", "plan": "pro"}}
# One request per operation that succeeds, (label, path parameters, headers, query, body,
# status): every documented 2xx and 304 body is then seen, whatever the fuzz drew.
SUCCESSES: list[tuple[str, dict[str, str], dict[str, str], dict[str, str], Any, int]] = [
    ("GET /", {}, {}, {}, None, 200),
    ("GET /healthz", {}, {}, {}, None, 200),
    ("GET /readyz", {}, {}, {}, None, 200),
    ("GET /api/v1/environments", {}, READ, {}, None, 200),
    ("GET /api/v1/environments/{env}/flags", {"env": ENVIRONMENT}, READ, {}, None, 200),
    (
        "GET /api/v1/environments/{env}/flags",
        {"env": ENVIRONMENT},
        ADMIN,
        {"view": "summary"},
        None,
        200,
    ),
    (
        "GET /api/v1/environments/{env}/flags/{key}",
        {"env": ENVIRONMENT, "key": "fuzz-on"},
        READ,
        {},
        None,
        200,
    ),
    (
        "GET /api/v1/environments/{env}/flags/{key}",
        {"env": ENVIRONMENT, "key": "fuzz-on"},
        {**READ, "If-None-Match": '"1"'},
        {},
        None,
        304,
    ),
    (
        "GET /api/v1/environments/{env}/flags/{key}/history",
        {"env": ENVIRONMENT, "key": "fuzz-on"},
        READ,
        {},
        None,
        200,
    ),
    (
        "PUT /api/v1/environments/{env}/flags/{key}",
        {"env": ENVIRONMENT, "key": "fuzz-success"},
        {**ADMIN, "Idempotency-Key": "fuzz-success-put", "X-Actor": "pytest"},
        {},
        flag("on", metadata={"team": "web"}),
        200,
    ),
    (
        "POST /api/v1/environments/{env}/flags/{key}/state",
        {"env": ENVIRONMENT, "key": "fuzz-success"},
        {**ADMIN, "If-Match": '"1"'},
        {},
        {"state": "DISABLED"},
        200,
    ),
    (
        "DELETE /api/v1/environments/{env}/flags/{key}",
        {"env": ENVIRONMENT, "key": "fuzz-success"},
        {**ADMIN, "If-Match": 'W/"2"'},
        {},
        None,
        200,
    ),
    (
        "POST /api/v1/environments/{env}/evaluate",
        {"env": ENVIRONMENT},
        SDK,
        {},
        {**CONTEXT, "at": "2026-11-25T14:03:00Z"},
        200,
    ),
    ("POST /api/v1/environments/{env}/evaluate", {"env": ENVIRONMENT}, READ, {}, CONTEXT, 200),
    (
        "POST /api/v1/exposures",
        {},
        SDK,
        {},
        {"exposures": [{"flag": "fuzz-split", "variant": "on", "targeting_key": "u"}, {}]},
        202,
    ),
    ("POST /ofrep/v1/evaluate/flags/{key}", {"key": "fuzz-on"}, SDK, {}, CONTEXT, 200),
    ("POST /ofrep/v1/evaluate/flags/{key}", {"key": "fuzz-disabled"}, SDK, {}, CONTEXT, 200),
    ("POST /ofrep/v1/evaluate/flags/{key}", {"key": "fuzz-no-default"}, SDK, {}, {}, 200),
    (
        "POST /ofrep/v1/evaluate/flags/{key}",
        {"key": "fuzz-split"},
        CREDENTIALS["sdk-x-api-key"],
        {},
        CONTEXT,
        200,
    ),
    ("POST /ofrep/v1/evaluate/flags/{key}", {"key": "fuzz-missing"}, SDK, {}, CONTEXT, 404),
    ("POST /ofrep/v1/evaluate/flags", {}, SDK, {"flagConfigEtag": '"1"'}, CONTEXT, 200),
]


def test_every_success_of_every_operation_answers_as_documented(worker: Worker) -> None:
    schema = schemathesis.openapi.from_dict(document())
    by_label = {result.ok().label: result.ok() for result in schema.get_all_operations()}
    session = requests.Session()
    for label, path_parameters, headers, query, body, status in SUCCESSES:
        operation = by_label[label]
        case = operation.Case(
            path_parameters=path_parameters,
            headers=headers,
            query=query,
            **({} if body is None else {"body": body, "media_type": "application/json"}),
        )
        response = case.call_and_validate(
            base_url=worker.url, session=session, checks=CHECKS, timeout=30
        )
        assert response.status_code == status, f"{label}: {response.text}"
        if operation.path.startswith("/ofrep/"):
            official_ofrep_check(operation.path, response.status_code, response.content)
        if label == "POST /ofrep/v1/evaluate/flags":
            etag = {**headers, "If-None-Match": response.headers["etag"][0]}
            again = operation.Case(headers=etag, body=body, media_type="application/json")
            cached = again.call_and_validate(
                base_url=worker.url, session=session, checks=CHECKS, timeout=30
            )
            assert cached.status_code == 304
    session.close()


STREAM_PATHS = {
    "/api/v1/environments/{env}/stream": f"/api/v1/environments/{ENVIRONMENT}/stream",
    "/ofrep/v1/events": "/ofrep/v1/events",
}


def open_stream(
    worker: Worker, method: str, path: str, headers: dict[str, str]
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """Status, headers and (for an error) body of a stream request; the stream is then closed."""
    parsed = urllib.parse.urlsplit(worker.url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        body = b"" if response.status == 200 or method == "HEAD" else response.read()
        return response.status, response.headers, body
    finally:
        connection.close()


@pytest.mark.parametrize("template", sorted(STREAM_PATHS))
@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    "extra", [{}, {"Last-Event-ID": "1"}, {"Last-Event-ID": "²"}], ids=["new", "resume", "bad-id"]
)
def test_streams_answer_as_documented(
    worker: Worker, template: str, method: str, extra: dict[str, str]
) -> None:
    operation = document()["paths"][template][method.lower()]
    for credential, headers in CREDENTIALS.items():
        status, response_headers, body = open_stream(
            worker, method, STREAM_PATHS[template], {**headers, **extra}
        )
        documented = operation["responses"].get(str(status))
        assert documented is not None, f"{method} {template} as {credential}: {status} {body!r}"
        if status == 200:
            assert response_headers["Content-Type"] == "text/event-stream"
        elif body:
            media = documented.get("content") or resolve(documented).get("content")
            schema = media["application/json"]["schema"]
            errors = list(validator(schema).iter_errors(json.loads(body)))
            assert not errors, f"{method} {template} as {credential}: {status} {body!r}: {errors}"


def resolve(item: dict[str, Any]) -> dict[str, Any]:
    """A `$ref` of this document, resolved once."""
    reference = item.get("$ref")
    if reference is None:
        return item
    node: Any = document()
    for part in reference.removeprefix("#/").split("/"):
        node = node[part]
    return resolve(node)


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A validator of `schema`, whose `$ref`s point into this document."""
    resource = Resource.from_contents(document(), default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:flagstream", resource)
    ref = schema.get("$ref")
    root = {"$ref": "urn:flagstream" + ref} if ref else schema
    return Draft202012Validator(root, registry=registry)


def test_an_empty_actor_is_answered_at_once(worker: Worker) -> None:
    """Found by the fuzzer: `PUT` with `X-Actor:` (empty) was a 504 after the write timeout."""
    path = f"/api/v1/environments/{ENVIRONMENT}/flags/fuzz-actor"
    headers = {**CREDENTIALS["admin"], "X-Actor": "", "Content-Type": "application/json"}
    started = time.monotonic()
    response = requests.put(
        worker.url + path, data=json.dumps(FLAGS["fuzz-on"]), headers=headers, timeout=30
    )
    assert response.status_code < 500, response.text
    assert time.monotonic() - started < 5


def test_a_key_with_a_trailing_newline_is_refused(worker: Worker) -> None:
    """Found against the document: `PUT .../flags/a%0A` created the flag "a\\n" (200)."""
    path = "/api/v1/environments/newline-probe/flags/a%0A"
    headers = {**CREDENTIALS["admin"], "Content-Type": "application/json"}
    response = requests.put(
        worker.url + path, data=json.dumps(FLAGS["fuzz-on"]), headers=headers, timeout=30
    )
    assert response.status_code == 400, response.text


# Every shape of OFREP body a worker sends, by (our schema, the official schema).
OFREP_BODIES: list[tuple[str, str, Any]] = [
    *(
        ("ofrepSuccess", "serverEvaluationSuccess", {**body, "metadata": {"team": "web"}})
        for body in (
            {"key": "f", "reason": "STATIC", "variant": "on", "value": True},
            {"key": "f", "reason": "TARGETING_MATCH", "variant": "b", "value": "blue"},
            {"key": "f", "reason": "DEFAULT", "variant": "n", "value": 3},
            {"key": "f", "reason": "STATIC", "variant": "x", "value": 0.5},
            {"key": "f", "reason": "STATIC", "variant": "o", "value": {"a": [1]}},
            {"key": "f", "reason": "DISABLED", "variant": ""},
            {"key": "f", "reason": "DEFAULT", "variant": ""},
        )
    ),
    *(
        ("ofrepFailure", "evaluationFailure", {"key": "f", "errorCode": code, "errorDetails": "d"})
        for code in ("PARSE_ERROR", "TARGETING_KEY_MISSING", "INVALID_CONTEXT", "GENERAL")
    ),
    (
        "ofrepFlagNotFound",
        "flagNotFound",
        {"key": "f", "errorCode": "FLAG_NOT_FOUND", "errorDetails": "d"},
    ),
    *(
        ("ofrepBulkFailure", "bulkEvaluationFailure", {"errorCode": code, "errorDetails": "d"})
        for code in ("PARSE_ERROR", "INVALID_CONTEXT", "GENERAL")
    ),
    (
        "ofrepBulkSuccess",
        "bulkEvaluationSuccess",
        {
            "flags": [
                {"key": "a", "reason": "STATIC", "variant": "on", "value": True, "metadata": {}},
                {"key": "b", "reason": "DISABLED", "variant": "", "metadata": {}},
                {"key": "c", "errorCode": "GENERAL", "errorDetails": "d", "metadata": {}},
            ],
            "eventStreams": [
                {
                    "type": "sse",
                    "endpoint": {"requestUri": "/ofrep/v1/events"},
                    "inactivityDelaySec": 120,
                }
            ],
        },
    ),
    ("ofrepRefusal", "generalErrorResponse", {"errorDetails": "d"}),
]


@pytest.mark.parametrize(("ours", "official", "body"), OFREP_BODIES)
def test_our_ofrep_schemas_and_the_official_ones_agree(ours: str, official: str, body: Any) -> None:
    """Each body shape a worker sends is valid under our schema and OFREP's (errata patched)."""
    if not SPEC.exists():
        pytest.skip(f"OFREP conformance data is absent ({SPEC})")
    errors = list(validator({"$ref": f"#/components/schemas/{ours}"}).iter_errors(body))
    assert not errors, [e.message for e in errors]
    conforms(body, official)
