"""Bad input on every HTTP route, as data: a 4xx naming the problem, a metric, no flag changed,
and the worker still answering (issue 8, part 2 item 2; the Kafka side is
tests/agents/test_bad_records.py).

Each case is (route, kind of bad input) -> (status, a phrase the error must contain). Kinds that
cannot apply to a route are absent (a missing field of an OFREP body: every field is optional).
What a flag-level problem does where it is not refused at the edge is part of the matrix too:
an explosive flag evaluated over OFREP ends in an error answer, semver garbage in a context
takes the rule's else branch. Unknown fields are ignored everywhere (docs/topics.md,
"Unknown fields"); a flag definition keeps them as given.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import threading
from typing import Any

import pytest

from app.web.http_metrics import ROUTE_NAMES
from tests.conftest import ADMIN_TOKEN, READ_TOKEN, SDK_KEY, Worker, flag
from tests.costly_flags import COSTLY, DOUBLING

ENV = "development"  # what SDK_KEY selects
API = "/api/v1/environments"
RESULTS = API + "/{env}/experiments/{key}/results"
EXPERIMENTS = ROUTE_NAMES.get(API + "/{env}/experiments", API + "/{env}/experiments")
RESULTS_LABEL = ROUTE_NAMES.get(RESULTS, RESULTS)
MAX_BODY = 262_144  # the default FLAGSTREAM_MAX_BODY_BYTES the worker runs with


SEEDED: dict[str, dict[str, Any]] = {
    "plain": flag("on"),
    "costly": COSTLY,
    "versioned": flag(targeting={"if": [{"sem_ver": [{"var": "v"}, ">=", "1.2.0"]}, "on", "off"]}),
    "measured": flag(metadata={"experiment": True, "metric.clicks": "conversion"}),
}


def targeted(targeting: Any) -> bytes:
    return json.dumps(flag(targeting=targeting)).encode()


def split(weight: Any) -> bytes:
    return targeted({"fractional": [{"var": "targetingKey"}, ["on", weight], ["off", 1]]})


def deep(depth: int) -> bytes:
    return b'{"context": {"a": ' + b"[" * depth + b"1" + b"]" * depth + b"}}"


# route -> (method, path, credential, the route's label in flagstream_http_requests_total)
ROUTES: dict[str, tuple[str, str, str, str]] = {
    "put": ("PUT", f"{API}/{ENV}/flags/plain", ADMIN_TOKEN, "flag"),
    "state": ("POST", f"{API}/{ENV}/flags/plain/state", ADMIN_TOKEN, "state"),
    "evaluate": ("POST", f"{API}/{ENV}/evaluate", READ_TOKEN, "evaluate"),
    "exposures": ("POST", "/api/v1/exposures", SDK_KEY, "exposures"),
    "metric-events": ("POST", "/api/v1/metric-events", SDK_KEY, "metric_events"),
    "ofrep": ("POST", "/ofrep/v1/evaluate/flags/plain", SDK_KEY, "ofrep"),
    "ofrep-bulk": ("POST", "/ofrep/v1/evaluate/flags", SDK_KEY, "ofrep_bulk"),
}
EVERY_BODY_ROUTE = tuple(ROUTES)
NOT_JSON = b'{"context": {'
NOT_UTF8 = b'{"context": {"a": "\xff\xfe"}}'
HUGE = b'{"context": {"pad": "' + b"x" * (MAX_BODY + 10) + b'"}}'
# kind -> (body, {route: (status, phrase)}); a path given with the route overrides its path.
CASES: dict[str, tuple[bytes, dict[str, tuple[int, str]]]] = {
    "invalid-json": (NOT_JSON, dict.fromkeys(EVERY_BODY_ROUTE, (400, "not JSON"))),
    "non-utf8": (NOT_UTF8, dict.fromkeys(EVERY_BODY_ROUTE, (400, "UTF-8"))),
    "nan": (b'{"context": {"a": NaN}}', dict.fromkeys(EVERY_BODY_ROUTE, (400, "not JSON"))),
    "lone-surrogate": (
        b'{"context": {"a": "\\ud800"}}',
        dict.fromkeys(EVERY_BODY_ROUTE, (400, "not JSON")),
    ),
    "deep-nesting": (deep(100), dict.fromkeys(EVERY_BODY_ROUTE, (400, "nested deeper than 64"))),
    "over-the-body-limit": (HUGE, dict.fromkeys(EVERY_BODY_ROUTE, (413, f"at most {MAX_BODY}"))),
    "not-an-object": (
        b"[1, 2]",
        {
            "put": (422, "a flag definition is a JSON object"),
            "state": (422, "$.state"),
            "evaluate": (400, "must be an object"),
            "exposures": (400, '{\\"exposures\\": [...]}'),
            "metric-events": (400, '{\\"events\\": [...]}'),
            "ofrep": (400, "must be a JSON object"),
            "ofrep-bulk": (400, "must be a JSON object"),
        },
    ),
    "wrong-field-type": (
        b'{"state": 1, "context": [1], "exposures": "x", "events": "x", "variants": [], '
        b'"defaultVariant": 2}',
        {
            "put": (422, "$.state"),
            "state": (422, "$.state"),
            "evaluate": (400, "$.context"),
            "exposures": (400, '{\\"exposures\\": [...]}'),
            "metric-events": (400, '{\\"events\\": [...]}'),
            "ofrep": (400, "context must be a JSON object"),
            "ofrep-bulk": (400, "context must be a JSON object"),
        },
    ),
    "targeting-key-not-a-string": (
        b'{"context": {"targetingKey": 5}}',
        {
            "ofrep": (400, "targetingKey must be a string"),
            "ofrep-bulk": (400, "targetingKey must be a string"),
        },
    ),
    "missing-fields": (
        b'{"defaultVariant": "on", "exposures": [{"flag": "plain"}], "events": [{"metric": "m"}]}',
        {
            "put": (422, "'state' is a required property"),
            "state": (422, "$.state"),
            "exposures": (202, "$.exposures[0].variant"),
            "metric-events": (202, "$.events[0].targeting_key"),
        },
    ),
    "undeclared-metric": (
        b'{"events": [{"targeting_key": "u", "metric": "undeclared", "value": 1}]}',
        {"metric-events": (202, "declares the metric 'undeclared'")},
    ),
    "conversion-value": (
        b'{"events": [{"targeting_key": "u", "metric": "clicks", "value": 2}]}',
        {"metric-events": (202, "$.events[0].value")},
    ),
    "metric-declaration": (
        json.dumps(flag(metadata={"experiment": True, "metric.clicks": "count"})).encode(),
        {"put": (422, "metric.clicks")},
    ),
    "explosive-jsonlogic": (targeted(DOUBLING), {"put": (422, "$.targeting.reduce[1]")}),
    "negative-weight": (split(-50), {"put": (422, "$.targeting.fractional[1][1]")}),
    "string-weight": (split("50"), {"put": (422, "$.targeting.fractional[1][1]")}),
    "float-weight": (split(0.5), {"put": (422, "$.targeting.fractional[1][1]")}),
    "semver-garbage": (
        targeted({"if": [{"sem_ver": [{"var": "v"}, ">=", "one.two"]}, "on", "off"]}),
        {"put": (422, "$.targeting.if[0].sem_ver[2]")},
    ),
    "semver-operator": (
        targeted({"if": [{"sem_ver": [{"var": "v"}, "~~", "1.0.0"]}, "on", "off"]}),
        {"put": (422, "$.targeting.if[0].sem_ver[1]")},
    ),
}
MATRIX = [(kind, route) for kind, (_, routes) in CASES.items() for route in routes]


def exchange(
    worker: Worker,
    method: str,
    path: str,
    token: str | None,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request over a raw socket (the body sent while the answer is read, so a 413 sent
    before the whole body arrived is read too); the status and the body as JSON or text."""
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n"
    head += "Content-Type: application/json\r\nConnection: close\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    with socket.create_connection(("127.0.0.1", worker.port), timeout=60) as sock:

        def send() -> None:
            with contextlib.suppress(OSError):  # answered and closed before all was sent
                sock.sendall(head.encode() + b"\r\n" + body)

        sender = threading.Thread(target=send)
        sender.start()
        response = http.client.HTTPResponse(sock)
        response.begin()
        raw = response.read()
        sender.join(timeout=60)
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw.decode(errors="replace")


def answered(worker: Worker, route: str, status: int) -> float:
    """flagstream_http_requests_total for one route name and status (0 when absent)."""
    sample = f'flagstream_http_requests_total{{route="{route}",status="{status}"}} '
    for line in worker.metrics().splitlines():
        if line.startswith(sample):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def still_serving(worker: Worker) -> None:
    status, body = exchange(
        worker, "POST", "/ofrep/v1/evaluate/flags/plain", SDK_KEY, b'{"context": {}}'
    )
    assert (status, body.get("value")) == (200, True), body


def table(worker: Worker) -> tuple[dict[str, Any], int]:
    admin = worker.admin()
    return admin.flags(ENV), admin.environments()[ENV]


@pytest.fixture(scope="module", autouse=True)
def seeded(worker: Worker) -> None:
    admin = worker.admin()
    for key, definition in SEEDED.items():
        admin.put(ENV, key, definition)


@pytest.mark.parametrize(("kind", "route"), MATRIX, ids=[f"{r}-{k}" for k, r in MATRIX])
def test_bad_input_is_a_4xx_that_names_the_problem(worker: Worker, kind: str, route: str) -> None:
    body, expected = CASES[kind]
    status, phrase = expected[route]
    method, path, token, label = ROUTES[route]
    flags_before = table(worker)
    counted_before = answered(worker, label, status)

    got, answer = exchange(worker, method, path, token, body)

    assert got == status, answer
    assert phrase in json.dumps(answer) or phrase in str(answer), answer
    assert answered(worker, label, status) > counted_before
    assert table(worker) == flags_before
    still_serving(worker)


# -- what a flag can do at evaluation, on the routes that evaluate -------------------------

# route -> (path, body, where the error shows, a phrase it contains)
EVALUATED: dict[str, tuple[str, bytes]] = {
    "ofrep": ("/ofrep/v1/evaluate/flags/costly", b'{"context": {"targetingKey": "u", "s": "a"}}'),
    "ofrep-bulk": ("/ofrep/v1/evaluate/flags", b'{"context": {"targetingKey": "u", "s": "a"}}'),
    "evaluate": (f"{API}/{ENV}/evaluate", b'{"flags": ["costly"], "context": {"s": "a"}}'),
}


@pytest.mark.parametrize("route", sorted(EVALUATED))
def test_an_explosive_flag_ends_in_an_error_answer(worker: Worker, route: str) -> None:
    """A flag whose cost depends on the context (it passed validation) is cut by the engine's
    work budget: an error for that flag, not a stalled worker or a 500."""
    path, body = EVALUATED[route]
    _, _, token, _ = ROUTES[route]
    status, answer = exchange(worker, "POST", path, token, body)
    assert status == (400 if route == "ofrep" else 200), answer
    text = json.dumps(answer)
    assert "evaluation budget exceeded" in text, text[:500]
    still_serving(worker)


@pytest.mark.parametrize("version", ["one..two", "", "1.2.3.4.5", "v" * 5000, "1.2.3-+"])
def test_a_context_with_semver_garbage_takes_the_else_branch(worker: Worker, version: str) -> None:
    body = json.dumps({"context": {"targetingKey": "u", "v": version}}).encode()
    status, answer = exchange(worker, "POST", "/ofrep/v1/evaluate/flags/versioned", SDK_KEY, body)
    assert (status, answer.get("variant")) == (200, "off"), answer


@pytest.mark.parametrize("total", ["zero", "over-int32"])
def test_a_split_without_usable_weights_is_refused_or_answers_the_default(
    worker: Worker, env: str, total: str
) -> None:
    """flagd accepts a split whose weights add up to 0 or past MaxInt32 and answers the
    default variant for it (the split is unusable); refusing it at validation would be fine
    too. Never a 500, never a variant out of thin air."""
    weights = [0, 0] if total == "zero" else [2**31, 2**31]
    targeting = {"fractional": [{"var": "targetingKey"}, ["on", weights[0]], ["off", weights[1]]]}
    definition = flag("off", targeting=targeting)
    reply = worker.admin().request("PUT", f"{API}/{env}/flags/split", definition)
    if reply.status == 422:
        assert "fractional" in json.dumps(reply.body), reply.body
        return
    assert reply.status == 200, reply.body
    evaluated = worker.admin().request(
        "POST", f"{API}/{env}/evaluate", {"flags": ["split"], "context": {"targetingKey": "u"}}
    )
    (result,) = evaluated.body["flags"]
    assert (result["variant"], result["reason"]) == ("off", "DEFAULT"), result


# -- path characters in keys and environments ----------------------------------------------

SEGMENTS = {
    "dot-dot": "..",
    "encoded-dot-dot": "%2e%2e",
    "encoded-slash": "a%2Fb",
    "nul": "a%00b",
    "not-utf8": "a%ffb",
    "space": "a%20b",
    "very-long": "k" * 5000,
}
# route -> (method, path with {env} and {key}, credential, label, body)
PATH_ROUTES = {
    "get": ("GET", API + "/{env}/flags/{key}", ADMIN_TOKEN, "flag"),
    "put": ("PUT", API + "/{env}/flags/{key}", ADMIN_TOKEN, "flag"),
    "delete": ("DELETE", API + "/{env}/flags/{key}", ADMIN_TOKEN, "flag"),
    "state": ("POST", API + "/{env}/flags/{key}/state", ADMIN_TOKEN, "state"),
    "history": ("GET", API + "/{env}/flags/{key}/history", ADMIN_TOKEN, "history"),
    "flags": ("GET", API + "/{env}/flags", READ_TOKEN, "flags"),
    "stream": ("GET", API + "/{env}/stream", READ_TOKEN, "stream"),
    "evaluate": ("POST", API + "/{env}/evaluate", READ_TOKEN, "evaluate"),
    # An experiment's name is any string its flag's metadata gives (`experimentKey`): never
    # a 400 for its characters (test_an_experiment_key_with_path_characters_is_404).
    "experiments": ("GET", API + "/{env}/experiments", READ_TOKEN, EXPERIMENTS),
    "experiment-results": (
        "GET",
        RESULTS.replace("{key}", "{experiment}"),
        READ_TOKEN,
        RESULTS_LABEL,
    ),
}
PATH_MATRIX = [
    (route, where, segment)
    for route, (_, template, _, _) in PATH_ROUTES.items()
    for where in ("env", "key")
    if "{" + where + "}" in template
    for segment in SEGMENTS
]
BODIES = {"put": json.dumps(flag()).encode(), "state": b'{"state": "DISABLED"}'}


@pytest.mark.parametrize(
    ("route", "where", "segment"),
    PATH_MATRIX,
    ids=[f"{r}-{w}-{s}" for r, w, s in PATH_MATRIX],
)
def test_path_characters_in_keys_and_environments_are_400(
    worker: Worker, route: str, where: str, segment: str
) -> None:
    method, template, token, label = PATH_ROUTES[route]
    fields = {"env": ENV, "key": "plain", "experiment": "plain", where: SEGMENTS[segment]}
    path = template.format(**fields)
    flags_before = table(worker)
    counted_before = answered(worker, label, 400)
    body = BODIES.get(route, b'{"context": {}}' if route == "evaluate" else b"")
    status, answer = exchange(worker, method, path, token, body)
    assert status == 400, answer
    name = "environment" if where == "env" else "flag"
    assert re.search(f"invalid {name} key", json.dumps(answer)), answer
    assert answered(worker, label, 400) > counted_before
    assert table(worker) == flags_before


@pytest.mark.parametrize("segment", sorted(SEGMENTS))
def test_an_experiment_key_with_path_characters_is_404(worker: Worker, segment: str) -> None:
    before = answered(worker, RESULTS_LABEL, 404)
    path = RESULTS.format(env=ENV, key=SEGMENTS[segment])
    status, answer = exchange(worker, "GET", path, READ_TOKEN)
    assert (status, answer["error"]["code"]) == (404, "EXPERIMENT_NOT_FOUND"), answer
    assert answered(worker, RESULTS_LABEL, 404) > before


@pytest.mark.parametrize(
    ("credential", "status"),
    [(ADMIN_TOKEN, 200), (READ_TOKEN, 200), (SDK_KEY, 401), ("wrong", 401), (None, 401)],
    ids=["admin", "read", "sdk-key", "wrong", "none"],
)
@pytest.mark.parametrize("path", [API + "/{env}/experiments", RESULTS])
def test_the_experiment_views_need_a_read_token(
    worker: Worker, path: str, credential: str | None, status: int
) -> None:
    """As the admin API's GETs: an SDK key (here the key of this very environment) reads
    flags to evaluate them, not the results of experiments."""
    got, answer = exchange(worker, "GET", path.format(env=ENV, key="measured"), credential)
    assert got == status, answer
    if status == 401:
        assert answer["error"]["code"] == "UNAUTHORIZED"
        assert SDK_KEY not in json.dumps(answer)


@pytest.mark.parametrize("segment", sorted(SEGMENTS))
def test_path_characters_in_an_ofrep_flag_key_name_no_flag(worker: Worker, segment: str) -> None:
    path = "/ofrep/v1/evaluate/flags/" + SEGMENTS[segment]
    status, answer = exchange(worker, "POST", path, SDK_KEY, b'{"context": {}}')
    assert (status, answer["errorCode"]) == (404, "FLAG_NOT_FOUND"), answer


@pytest.mark.parametrize("path", [f"{API}/a/b/flags/plain", f"{API}/{ENV}/flags/a/b"])
def test_a_raw_slash_in_a_key_matches_no_route(worker: Worker, path: str) -> None:
    before = answered(worker, "unmatched", 404)
    status, _ = exchange(worker, "GET", path, ADMIN_TOKEN)
    assert status == 404
    assert answered(worker, "unmatched", 404) > before


# -- unknown fields: ignored -------------------------------------------------------------

# route -> (path, body without, the same body with unknown fields)
UNKNOWN: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "ofrep": ("/ofrep/v1/evaluate/flags/plain", {"context": {}}, {"context": {}, "zzz": [1]}),
    "ofrep-bulk": ("/ofrep/v1/evaluate/flags", {"context": {}}, {"context": {}, "zzz": 1}),
    "evaluate": (
        f"{API}/{ENV}/evaluate",
        {"flags": ["plain"], "context": {}},
        {"flags": ["plain"], "context": {}, "zzz": {"a": 1}},
    ),
    "exposures": (
        "/api/v1/exposures",
        {"exposures": [{"flag": "plain", "variant": "on", "targeting_key": "u"}]},
        {
            "zzz": 1,
            "exposures": [{"flag": "plain", "variant": "on", "targeting_key": "u", "zzz": 2}],
        },
    ),
    "metric-events": (
        "/api/v1/metric-events",
        {"events": [{"targeting_key": "u", "metric": "clicks", "event_id": "e"}]},
        {"zzz": 1, "events": [{"targeting_key": "u", "metric": "clicks", "event_id": "e", "z": 2}]},
    ),
}


@pytest.mark.parametrize("route", sorted(UNKNOWN))
def test_unknown_fields_are_ignored(worker: Worker, route: str) -> None:
    path, plain, extra = UNKNOWN[route]
    _, _, token, _ = ROUTES[route]
    without = exchange(worker, "POST", path, token, json.dumps(plain).encode())
    with_extra = exchange(worker, "POST", path, token, json.dumps(extra).encode())
    assert with_extra[0] == without[0] < 300, with_extra
    if route == "ofrep-bulk":  # the same flags; the ETag covers the context only
        assert with_extra[1]["flags"] == without[1]["flags"]
    elif route != "exposures":
        assert with_extra[1] == without[1]


def test_unknown_fields_of_a_flag_definition_are_kept_as_given(worker: Worker, env: str) -> None:
    definition = flag(zzz={"kept": True})
    worker.admin().put(env, "extra", definition)
    assert worker.admin().flags(env)["extra"] == definition
    state = worker.admin().request(
        "POST", f"{API}/{env}/flags/extra/state", {"state": "DISABLED", "zzz": 1}
    )
    assert state.status == 200 and state.body["definition"]["state"] == "DISABLED"
