"""The admin API against a real worker, broker and RocksDB."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from app.control.client import AdminClient
from app.infra.records import ChangeOp, FlagChange, dumps
from app.infra.topics import partition_for
from tests.conftest import (
    ADMIN_TOKEN,
    READ_TOKEN,
    REPO,
    Worker,
    flag,
    produce,
    read_topic,
    wait_until,
)
from tests.worker_topics import topics_of

PARTITIONS = 4  # the default FLAGSTREAM_FLAG_CHANGE_PARTITIONS the worker runs with


def path(env: str, key: str = "") -> str:
    return f"/api/v1/environments/{env}/flags" + (f"/{key}" if key else "")


def cli(worker: Worker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "flags",
            *args,
            "--url",
            worker.url,
            "--token",
            ADMIN_TOKEN,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_apply_a_file_and_read_it_back(worker: Worker, env: str, tmp_path: Path) -> None:
    source = REPO / "examples" / "flags.json"
    first = cli(worker, "apply", "-f", str(source), "--env", env)
    assert first.returncode == 0, first.stderr
    assert "5 created, 0 updated, 0 deleted, 0 unchanged" in first.stdout

    exported = tmp_path / "export.json"
    assert cli(worker, "export", "--env", env, "-o", str(exported)).returncode == 0
    assert json.loads(exported.read_text())["flags"] == json.loads(source.read_text())["flags"]

    again = cli(worker, "apply", "-f", str(exported), "--env", env)
    assert "0 created, 0 updated, 0 deleted, 5 unchanged" in again.stdout
    history = worker.admin().history(env, "new-checkout")
    assert [v["version"] for v in history] == [1], "an unchanged flag gets no new version"


def test_apply_updates_only_what_differs_and_prunes_on_request(
    worker: Worker, env: str, tmp_path: Path
) -> None:
    admin = worker.admin()
    admin.put(env, "keep", flag())
    admin.put(env, "change", flag())
    admin.put(env, "extra", flag())
    document = {"flags": {"keep": flag(), "change": flag(default="on"), "new": flag()}}
    file = tmp_path / "flags.json"
    file.write_text(json.dumps(document))

    kept = cli(worker, "apply", "-f", str(file), "--env", env)
    assert "1 created, 1 updated, 0 deleted, 1 unchanged" in kept.stdout
    assert set(admin.flags(env)) == {"keep", "change", "extra", "new"}

    pruned = cli(worker, "apply", "-f", str(file), "--env", env, "--prune")
    assert "0 created, 0 updated, 1 deleted, 3 unchanged" in pruned.stdout
    assert set(admin.flags(env)) == {"keep", "change", "new"}


def test_apply_inlines_shared_evaluators(worker: Worker, env: str, tmp_path: Path) -> None:
    rule = {"in": [{"var": "country"}, ["DE", "FR"]]}
    document = {
        "$evaluators": {"eu": rule},
        "flags": {"eu-only": flag(targeting={"if": [{"$ref": "eu"}, "on", "off"]})},
    }
    file = tmp_path / "flags.json"
    file.write_text(json.dumps(document))
    assert cli(worker, "apply", "-f", str(file), "--env", env).returncode == 0
    assert worker.admin().flags(env)["eu-only"]["targeting"] == {"if": [rule, "on", "off"]}


def test_version_conflict_gives_409(worker: Worker, env: str) -> None:
    admin = worker.admin()
    assert admin.put(env, "f", flag())["version"] == 1
    assert admin.put(env, "f", flag(default="on"), version=1)["version"] == 2
    stale = admin.request("PUT", path(env, "f"), flag(), {"If-Match": '"1"'})
    assert stale.status == 409
    assert stale.body["error"]["code"] == "VERSION_CONFLICT"
    assert stale.body["error"]["current_version"] == 2
    assert admin.flag(env, "f").headers["ETag"] == '"2"'


def test_invalid_definition_gives_422_with_every_problem_and_a_dead_letter(
    worker: Worker, env: str, broker: str
) -> None:
    bad = {"state": "ON", "variants": {"a": 1}, "defaultVariant": "missing"}
    reply = worker.admin().request("PUT", path(env, "bad"), bad)
    assert reply.status == 422
    problems = {p["path"] for p in reply.body["error"]["problems"]}
    assert {"$.state", "$.defaultVariant"} <= problems
    change_id = reply.body["error"]["change_id"]
    letters = [
        d
        for d in read_topic(broker, topics_of(worker).dead_letters)
        if d.get("change_id") == change_id
    ]
    assert len(letters) == 1
    letter = letters[0]
    assert letter["code"] == "INVALID_DEFINITION"
    assert letter["topic"] == topics_of(worker).flag_changes and letter[
        "partition"
    ] == partition_for(env, PARTITIONS)
    assert json.loads(letter["payload"])["definition"] == bad
    assert worker.admin().flag(env, "bad").status == 404


def test_garbage_bytes_give_a_dead_letter_and_the_next_change_still_applies(
    worker: Worker, env: str, broker: str
) -> None:
    partition = partition_for(env, PARTITIONS)
    garbage = b"\xff\xfe not json \x00" + uuid.uuid4().bytes
    good = FlagChange(str(uuid.uuid4()), env, "after-garbage", ChangeOp.PUT, "pytest", 0.0, flag())
    produce(
        broker,
        topics_of(worker).flag_changes,
        [(env.encode(), garbage), (env.encode(), b"[1, 2]"), (env.encode(), dumps(good.to_json()))],
        partition,
    )

    wait_until(lambda: worker.admin().flag(env, "after-garbage").status == 200)
    letters = read_topic(broker, topics_of(worker).dead_letters)
    assert any(d.get("payload_base64") and d["code"] == "MALFORMED" for d in letters)
    assert any(d.get("payload") == "[1, 2]" and d["code"] == "MALFORMED" for d in letters)
    metrics = worker.metrics()
    assert 'flagstream_dead_letters_total{code="MALFORMED"}' in metrics


def test_a_redelivered_change_applies_once(worker: Worker, env: str, broker: str) -> None:
    change = FlagChange(str(uuid.uuid4()), env, "once", ChangeOp.PUT, "pytest", 0.0, flag())
    raw = dumps(change.to_json())
    produce(
        broker,
        topics_of(worker).flag_changes,
        [(env.encode(), raw), (env.encode(), raw)],
        partition_for(env, PARTITIONS),
    )
    wait_until(lambda: worker.admin().flag(env, "once").status == 200)
    # A later change proves both copies have been decided before we look at the history.
    worker.admin().put(env, "later", flag())
    assert [v["version"] for v in worker.admin().history(env, "once")] == [1]


def test_kill_switch_delete_and_history(worker: Worker, env: str) -> None:
    admin = worker.admin()
    admin.put(env, "k", flag(default="on"))
    assert admin.set_state(env, "k", "DISABLED")["definition"]["state"] == "DISABLED"
    assert admin.flags(env)["k"]["state"] == "DISABLED"
    assert admin.flags(env)["k"]["defaultVariant"] == "on", "the kill switch changes only the state"
    admin.delete(env, "k")
    assert admin.flag(env, "k").status == 404
    assert [(v["version"], v["op"]) for v in admin.history(env, "k")] == [
        (3, "delete"),
        (2, "state"),
        (1, "put"),
    ]
    recreated = admin.put(env, "k", flag())
    assert recreated["version"] == 4, "versions never go back, so ETags stay unique"
    missing = admin.request("POST", path(env, "nope") + "/state", {"state": "ENABLED"})
    assert missing.status == 404


def test_auth_and_bad_requests(worker: Worker, env: str) -> None:
    anonymous = AdminClient(worker.url, "")
    reader = AdminClient(worker.url, READ_TOKEN)
    wrong = AdminClient(worker.url, "not-a-token")
    assert anonymous.request("GET", path(env)).status == 401
    assert wrong.request("GET", path(env)).status == 401
    assert reader.request("GET", path(env)).status == 200
    assert reader.request("PUT", path(env, "x"), flag()).status == 403
    assert wrong.request("PUT", path(env, "x"), flag()).status == 401

    admin = worker.admin()
    huge = {"state": "ENABLED", "variants": {"on": "x" * 300_000}, "defaultVariant": "on"}
    assert admin.request("PUT", path(env, "x"), huge).status == 413
    assert admin.request("PUT", path(env, "x"), [1, 2]).status == 422
    assert admin.request("PUT", path(env, "bad%20key!"), flag()).status == 400
    assert admin.request("PUT", path(env, "x"), flag(), {"If-Match": "soon"}).status == 400
    assert admin.request("POST", path(env, "x") + "/state", {"state": "ON"}).status == 422


def test_a_token_learns_what_it_may_do(worker: Worker) -> None:
    """The dashboard hides what a token may not do; before this route it probed with a write."""
    answers = {
        token: AdminClient(worker.url, token).request("GET", "/api/v1/access")
        for token in (ADMIN_TOKEN, READ_TOKEN, "not-a-token")
    }
    assert answers[ADMIN_TOKEN].status == 200
    assert answers[ADMIN_TOKEN].body == {"access": "admin"}
    assert (answers[READ_TOKEN].status, answers[READ_TOKEN].body) == (200, {"access": "read"})
    assert answers["not-a-token"].status == 401
    assert "not-a-token" not in json.dumps(answers["not-a-token"].body)


def test_conditional_reads(worker: Worker, env: str) -> None:
    admin = worker.admin()
    admin.put(env, "c", flag())
    first = admin.request("GET", path(env))
    again = admin.request("GET", path(env), headers={"If-None-Match": first.headers["ETag"]})
    assert again.status == 304
    one = admin.flag(env, "c")
    assert (
        admin.request("GET", path(env, "c"), headers={"If-None-Match": one.headers["ETag"]}).status
        == 304
    )


def test_operations_endpoints(worker: Worker) -> None:
    admin = worker.admin()
    assert admin.request("GET", "/healthz").status == 200
    assert admin.request("GET", "/readyz").body["status"] == "ready"
    metrics = worker.metrics()
    for name in (
        "flagstream_flag_changes_total",
        "flagstream_flag_propagation_seconds",
        "flagstream_ready 1.0",
        'flagstream_worker_info{app_id="flagstream-test",'
        f'worker_id="127.0.0.1:{worker.port}"}} 1.0',
    ):
        assert name in metrics


def test_everyday_cli_commands(worker: Worker, env: str) -> None:
    worker.admin().put(env, "daily", flag(default="on"))
    off = cli(worker, "off", "daily", "--env", env)
    assert off.returncode == 0 and "daily is DISABLED (version 2)" in off.stdout
    assert "daily is ENABLED (version 3)" in cli(worker, "on", "daily", "--env", env).stdout
    listed = cli(worker, "list", "--env", env).stdout
    assert "daily" in listed and "ENABLED" in listed and "v3" in listed
    got = cli(worker, "get", "daily", "--env", env).stdout
    assert "version 3" in got and json.loads(got.split("\n", 1)[1]) == flag(default="on")
    history = cli(worker, "history", "daily", "--env", env).stdout.splitlines()
    assert [line.split()[:2] for line in history] == [
        ["v3", "state"],
        ["v2", "state"],
        ["v1", "put"],
    ]
    missing = cli(worker, "get", "nope", "--env", env)
    assert missing.returncode == 2 and "404 FLAG_NOT_FOUND" in missing.stderr


def nested(depth: int, inner: object = True) -> object:
    """`inner` inside `depth` arrays."""
    value = inner
    for _ in range(depth):
        value = [value]
    return value


def test_over_deep_json_is_refused_at_the_edge(worker: Worker, env: str) -> None:
    """Was a 500: `dataclasses.asdict` of the change recursed past Python's limit."""
    admin = worker.admin()
    deep_variant = {"state": "ENABLED", "variants": {"on": nested(252)}, "defaultVariant": "on"}
    negations: object = True
    for _ in range(300):
        negations = {"!": negations}
    deep_targeting = flag(targeting={"if": [negations, "on", "off"]})
    for definition in (deep_variant, deep_targeting):
        # Sent raw: the admin client's orjson refuses to encode past 255 levels itself.
        status, body = raw_put(worker, path(env, "deep"), json.dumps(definition).encode())
        assert status == 400, body
        assert body["error"]["problems"] == [
            {"path": "$", "message": "the body is nested deeper than 64 levels"}
        ]
    # Within the edge's bound but deeper than a flag may be: the engine names the path (422).
    inside = {"state": "ENABLED", "variants": {"on": nested(40)}, "defaultVariant": "on"}
    assert admin.request("PUT", path(env, "deep"), inside).status == 422
    assert admin.flag(env, "deep").status == 404
    state = admin.request("POST", path(env, "deep") + "/state", nested(100, {"state": "ON"}))
    assert state.status == 400


def test_json_that_cannot_be_written_back_is_400(worker: Worker, env: str) -> None:
    """A lone surrogate parsed (json.loads) but could not be produced (orjson): a 500."""
    raw = b'{"state": "ENABLED", "variants": {"on": "\\ud800"}, "defaultVariant": "on"}'
    reply = raw_put(worker, path(env, "surrogate"), raw)
    assert reply[0] == 400 and "not JSON" in reply[1]["error"]["message"]
    assert raw_put(worker, path(env, "nan"), b'{"state": NaN}')[0] == 400


def raw_put(worker: Worker, target: str, raw: bytes) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
        connection.request("PUT", target, raw, headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize(
    "if_match",
    ['"²"', "²", '"' + "9" * 5000 + '"', '"' + "9" * 19 + '"', '"-1"', '"1.0"', '""'],
    ids=[
        "superscript",
        "bare-superscript",
        "5000-digits",
        "beyond-int64",
        "negative",
        "float",
        "empty",
    ],
)
def test_an_if_match_that_is_no_version_is_400(worker: Worker, env: str, if_match: str) -> None:
    """`"²"` passed `str.isdigit()`, then `int()` raised: a 500 (sent as UTF-8, as curl does)."""
    connection = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "If-Match": if_match.encode()}
        connection.request("PUT", path(env, "m"), json.dumps(flag()), headers)
        response = connection.getresponse()
        status, body = response.status, json.loads(response.read())
    finally:
        connection.close()
    assert status == 400, body
    assert body["error"]["code"] == "BAD_REQUEST"
    assert worker.admin().flag(env, "m").status == 404


def test_every_answer_is_counted_by_route_and_status(worker: Worker, env: str) -> None:
    admin = worker.admin()
    admin.put(env, "counted", flag())
    admin.request("PUT", path(env, "counted"), flag(), {"If-Match": '"²"'})
    admin.request("GET", path(env, "counted"), headers={"If-None-Match": '"1"'})
    admin.request("GET", "/api/v1/no-such-route")
    admin.request("GET", f"/api/v1/environments/{env}/flags/counted/history")
    text = worker.metrics()
    for route, status in (
        ("flag", 200),
        ("flag", 400),
        ("flag", 304),
        ("unmatched", 404),
        ("history", 200),
    ):
        assert f'flagstream_http_requests_total{{route="{route}",status="{status}"}}' in text


def put_with_header(worker: Worker, target: str, name: str, value: bytes) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", name: value}
        connection.request("PUT", target, json.dumps(flag()), headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("header", ["X-Actor", "Idempotency-Key"])
def test_a_header_that_is_not_utf8_is_400(worker: Worker, env: str, header: str) -> None:
    """aiohttp keeps undecodable bytes as surrogates, which the change record could not carry."""
    status, body = put_with_header(worker, path(env, "latin"), header, "René".encode("latin-1"))
    assert status == 400, body
    assert body["error"]["message"] == f"{header} must be UTF-8 text"
    assert put_with_header(worker, path(env, "latin"), header, "René".encode())[0] == 200
