"""Time-travel evaluation: the versions live at a moment, evaluated as of that moment."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from app.control.client import AdminClient
from tests.conftest import READ_TOKEN, SDK_KEY, Worker, flag

COLORS = {"state": "ENABLED", "variants": {"red": "red", "blue": "blue"}, "defaultVariant": "red"}


def evaluate(
    worker: Worker, env: str, body: dict[str, object], token: str = READ_TOKEN
) -> dict[str, object]:
    reply = AdminClient(worker.url, token).request(
        "POST", f"/api/v1/environments/{env}/evaluate", body
    )
    assert reply.status == 200, reply.body
    return {item["key"]: item for item in reply.body["flags"]}


def test_each_moment_gets_the_version_live_then(worker: Worker, env: str) -> None:
    admin = worker.admin()
    moments = []
    for definition in (
        COLORS,
        {**COLORS, "defaultVariant": "blue"},
        {**COLORS, "targeting": {"if": [{"==": [{"var": "plan"}, "pro"]}, "red", "blue"]}},
    ):
        admin.put(env, "color", definition)
        time.sleep(0.05)
        moments.append(time.time())
        time.sleep(0.05)
    admin.delete(env, "color")
    context = {"targetingKey": "user-1", "plan": "pro"}
    answers = [evaluate(worker, env, {"context": context, "at": at})["color"] for at in moments]
    assert [(a["version"], a["variant"], a["reason"]) for a in answers] == [
        (1, "red", "STATIC"),
        (2, "blue", "STATIC"),
        (3, "red", "TARGETING_MATCH"),
    ]
    iso = datetime.fromtimestamp(moments[1], UTC).isoformat().replace("+00:00", "Z")
    assert evaluate(worker, env, {"context": context, "at": iso})["color"]["variant"] == "blue"
    assert evaluate(worker, env, {"context": context, "at": moments[0] - 60}) == {}
    now = evaluate(worker, env, {"context": context, "flags": ["color"]})["color"]
    assert now["error_code"] == "FLAG_NOT_FOUND", "deleted now"


def test_timestamp_rules_see_the_moment_asked_about(worker: Worker, env: str) -> None:
    rule = {"if": [{"<": [{"var": "$flagd.timestamp"}, 2_000_000_000]}, "red", "blue"]}
    worker.admin().put(env, "dated", {**COLORS, "targeting": rule})
    later = time.time() + 1
    assert evaluate(worker, env, {"context": {}, "at": later})["dated"]["variant"] == "red"


def test_the_sdk_key_of_the_environment_may_ask_and_bad_requests_are_400(worker: Worker) -> None:
    worker.admin().put("development", "sdk-visible", flag())
    assert "sdk-visible" in evaluate(worker, "development", {"context": {}}, token=SDK_KEY)
    client = AdminClient(worker.url, SDK_KEY)
    assert (
        client.request("POST", "/api/v1/environments/other/evaluate", {"context": {}}).status == 401
    )
    reader = AdminClient(worker.url, READ_TOKEN)
    for body in (
        {"context": []},
        {"at": "yesterday"},
        {"at": "2026-11-25T14:03:00"},
        {"flags": "a"},
        [],
    ):
        reply = reader.request("POST", "/api/v1/environments/development/evaluate", body)
        assert reply.status == 400, body
        assert reply.body["error"]["problems"]


def test_credentials_are_checked_before_the_request_and_a_targeting_key_is_text(
    worker: Worker,
) -> None:
    anonymous = AdminClient(worker.url, "not-a-token")
    assert anonymous.request("POST", "/api/v1/environments/a..b/evaluate", {}).status == 401
    reply = worker.admin().request(
        "POST", "/api/v1/environments/development/evaluate", {"context": {"targetingKey": 5}}
    )
    assert reply.status == 400, reply.body
    assert reply.body["error"]["problems"] == [
        {"path": "$.context.targetingKey", "message": "must be a string"}
    ]
