"""An `Idempotency-Key` names one request: its retry gets the first answer, another request
under the same key is refused (422) and changes nothing."""

from __future__ import annotations

import uuid
from typing import Any

from app.control.client import AdminClient, Reply
from tests.conftest import Worker, flag


def put(admin: AdminClient, env: str, key: str, definition: Any, idempotency_key: str) -> Reply:
    return admin.request(
        "PUT",
        f"/api/v1/environments/{env}/flags/{key}",
        definition,
        headers={"Idempotency-Key": idempotency_key},
    )


def test_a_retry_with_the_same_key_gets_the_first_answer(worker: Worker, env: str) -> None:
    admin = worker.admin()
    key = str(uuid.uuid4())
    first = put(admin, env, "f", flag(default="on"), key)
    again = put(admin, env, "f", flag(default="on"), key)
    assert (first.status, again.status) == (200, 200)
    assert again.body == first.body
    assert [row["version"] for row in admin.summary(env)] == [1]


def test_the_same_key_on_another_flag_is_422_and_creates_nothing(worker: Worker, env: str) -> None:
    admin = worker.admin()
    key = str(uuid.uuid4())
    assert put(admin, env, "first", flag(), key).status == 200
    other = put(admin, env, "second", flag(), key)
    assert other.status == 422, other.body
    assert other.body["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert admin.flag(env, "second").status == 404
    assert set(admin.flags(env)) == {"first"}


def test_the_same_key_with_another_definition_is_422(worker: Worker, env: str) -> None:
    admin = worker.admin()
    key = str(uuid.uuid4())
    assert put(admin, env, "f", flag(default="off"), key).status == 200
    other = put(admin, env, "f", flag(default="on"), key)
    assert other.status == 422, other.body
    assert admin.flags(env)["f"]["defaultVariant"] == "off"


def test_the_same_key_in_another_environment_is_another_request(worker: Worker, env: str) -> None:
    admin = worker.admin()
    key = str(uuid.uuid4())
    assert put(admin, env, "f", flag(), key).status == 200
    assert put(admin, env + "-b", "f", flag(), key).status == 200
    assert set(admin.flags(env + "-b")) == {"f"}


def test_an_idempotency_key_longer_than_a_change_id_may_be_is_400(worker: Worker, env: str) -> None:
    reply = put(worker.admin(), env, "f", flag(), "k" * 201)
    assert reply.status == 400, reply.body
    assert "Idempotency-Key" in reply.body["error"]["message"]
    assert put(worker.admin(), env, "f", flag(), "k" * 200).status == 200
