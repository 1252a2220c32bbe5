"""Evaluation over Kafka against a real broker and worker: the client, the agent, dead letters."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from app.engine import compile_flag, evaluate
from app.engine.model import CompiledFlag
from app.evaluation.client import EvaluationClient
from app.evaluation.records import EvaluationResult
from tests.conftest import Worker, flag, produce, read_topic, wait_until
from tests.worker_topics import topics_of

RESULT_PARTITIONS = 8  # the default FLAGSTREAM_EVALUATION_PARTITIONS the worker runs with
T = TypeVar("T")

FLAGS: dict[str, dict[str, Any]] = {
    "plain": flag("on"),
    "disabled": flag("on", state="DISABLED"),
    "by-email": flag(
        "off", targeting={"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on", "off"]}
    ),
    "split": flag(
        "off", targeting={"fractional": [{"var": "targetingKey"}, ["on", 50], ["off", 50]]}
    ),
}
CONTEXTS: list[dict[str, Any]] = [
    {"targetingKey": f"user-{i}", "email": f"u{i}@{'example.com' if i % 2 else 'other.org'}"}
    for i in range(8)
]


def with_client(
    worker: Worker, use: Callable[[EvaluationClient], Awaitable[T]], **options: Any
) -> T:
    async def run() -> T:
        async with EvaluationClient(
            worker.brokers, topics=topics_of(worker), timeout_s=30, fetch_max_wait_ms=10, **options
        ) as client:
            return await use(client)

    return asyncio.run(run())


@pytest.fixture
def flags(worker: Worker, env: str) -> dict[str, CompiledFlag]:
    """The test flags, put in `env`, compiled by the engine: the oracle of every result."""
    admin = worker.admin()
    compiled = {}
    for key, definition in FLAGS.items():
        admin.put(env, key, definition)
        result = compile_flag(key, definition)
        assert isinstance(result, CompiledFlag)
        compiled[key] = result
    return compiled


def expected(compiled: dict[str, CompiledFlag], context: dict[str, Any]) -> dict[str, Any]:
    now = int(time.time())
    return {
        key: (r.value, r.variant, r.reason.value)
        for key, flag_ in compiled.items()
        for r in [evaluate(flag_, context, now, key)]
    }


def outcome(result: EvaluationResult) -> dict[str, Any]:
    assert result.error is None, result.error
    return {k: (f.value, f.variant, f.reason) for k, f in result.flags.items()}


def test_single_requests_match_the_engine(
    worker: Worker, env: str, flags: dict[str, CompiledFlag]
) -> None:
    async def use(client: EvaluationClient) -> list[EvaluationResult]:
        return [await client.evaluate(env, context, list(flags)) for context in CONTEXTS]

    results = with_client(worker, use)
    for context, result in zip(CONTEXTS, results, strict=True):
        assert result.environment == env
        assert outcome(result) == expected(flags, context)
        assert all(f.flag_version == 1 and f.error_code is None for f in result.flags.values())
    assert {r.flags["by-email"].variant for r in results} == {"on", "off"}


def test_a_batch_is_answered_in_order_by_one_record(
    worker: Worker, env: str, flags: dict[str, CompiledFlag]
) -> None:
    results = with_client(worker, lambda c: c.evaluate_many(env, CONTEXTS, ["split", "by-email"]))
    assert [outcome(r) for r in results] == [
        {k: v for k, v in expected(flags, c).items() if k in ("split", "by-email")}
        for c in CONTEXTS
    ]
    records = [
        r
        for r in read_topic(worker.brokers, topics_of(worker).evaluation_results, RESULT_PARTITIONS)
    ]
    batch = [r for r in records if results[0].request_id in json.dumps(r)]
    assert len(batch) == 1 and [r["request_id"] for r in batch[0]["results"]] == [
        r.request_id for r in results
    ]


def test_a_batch_too_large_for_one_record_is_answered_by_several_in_order(
    worker: Worker, env: str
) -> None:
    """4,000 requests of a ~600-byte result each: over Kafka's 1 MiB a record, so split."""
    worker.admin().put(env, "wide", flag("on", variants={"on": "x" * 500, "off": "y"}))
    contexts = [{"targetingKey": f"wide-{i}"} for i in range(4000)]
    results = with_client(worker, lambda c: c.evaluate_many(env, contexts, ["wide"]))
    assert [r.flags["wide"].value for r in results] == ["x" * 500] * 4000
    records = read_topic(worker.brokers, topics_of(worker).evaluation_results, RESULT_PARTITIONS)
    ids = {r.request_id for r in results}
    parts = [r for r in records if r.get("results") and r["results"][0]["request_id"] in ids]
    assert len(parts) >= 3, "2.4 MB of results needs at least three records"
    assert all(len(json.dumps(part)) < 1_000_000 for part in parts)
    in_order = [item["request_id"] for part in parts for item in part["results"]]
    assert in_order == [r.request_id for r in results]


def test_no_flag_keys_means_every_flag(
    worker: Worker, env: str, flags: dict[str, CompiledFlag]
) -> None:
    result = with_client(worker, lambda c: c.evaluate(env, CONTEXTS[1]))
    assert outcome(result) == expected(flags, CONTEXTS[1])
    assert result.flags["disabled"].reason == "DISABLED"


def test_unknown_flags_and_environments_are_not_found(
    worker: Worker, env: str, flags: dict[str, CompiledFlag]
) -> None:
    async def use(client: EvaluationClient) -> list[EvaluationResult]:
        return [
            await client.evaluate(env, CONTEXTS[0], ["plain", "missing"]),
            await client.evaluate("no-such-env", CONTEXTS[0], ["plain"]),
            await client.evaluate("no-such-env", CONTEXTS[0]),
        ]

    known, unknown_env, every_flag_of_nothing = with_client(worker, use)
    assert known.flags["plain"].value is True
    for missing in (known.flags["missing"], unknown_env.flags["plain"]):
        assert missing.error_code == "FLAG_NOT_FOUND"
        assert (missing.value, missing.reason, missing.flag_version) == (None, "ERROR", None)
    assert every_flag_of_nothing.flags == {} and every_flag_of_nothing.error is None


def test_results_go_to_the_reply_topic(
    worker: Worker, env: str, flags: dict[str, CompiledFlag]
) -> None:
    reply_to = f"{topics_of(worker).evaluation_results}.pytest-{uuid.uuid4().hex[:8]}"
    results = with_client(
        worker, lambda c: c.evaluate_many(env, CONTEXTS[:2], ["plain"]), reply_to=reply_to
    )
    assert [r.flags["plain"].value for r in results] == [True, True]
    # The client reads only the reply topic, so the results came there, and only there:
    on_default_topic = json.dumps(
        read_topic(
            worker.brokers, topics_of(worker).evaluation_results, RESULT_PARTITIONS, idle_s=0.3
        )
    )
    assert results[0].request_id not in on_default_topic


def test_malformed_records_get_error_results_and_dead_letters(worker: Worker, env: str) -> None:
    worker.admin().put(env, "plain", flag("on"))
    good = {"request_id": "good-1", "environment": env, "flags": ["plain"], "context": {}}
    records = {
        "bytes": b"\xff\xfe\x00",
        "json": b"{not json",
        "context": json.dumps(
            {"schema": 1, "request_id": "bad-ctx", "environment": env, "context": [1]}
        ).encode(),
        "reply_to": json.dumps(
            {
                "schema": 1,
                **good,
                "request_id": "bad-reply",
                "reply_to": topics_of(worker).flag_changes,
            }
        ).encode(),
        "batch": json.dumps(
            {
                "schema": 1,
                "requests": [
                    {**good, "request_id": "batch-good"},
                    {"request_id": "batch-bad", "environment": env, "flags": "plain"},
                    "not an object",
                ],
            }
        ).encode(),
    }
    offsets = dict(
        zip(
            records,
            produce(
                worker.brokers,
                topics_of(worker).evaluation_requests,
                [(env.encode(), value) for value in records.values()],
                partition=0,
            ),
            strict=True,
        )
    )

    # The agent keeps answering after all of them.
    after = with_client(worker, lambda c: c.evaluate(env, {}, ["plain"]))
    assert after.flags["plain"].value is True

    results = {
        r.get("request_id") or r["results"][0]["request_id"]: r
        for r in read_topic(worker.brokers, topics_of(worker).evaluation_results, RESULT_PARTITIONS)
        if "bad-" in json.dumps(r) or "batch-" in json.dumps(r)
    }
    assert results["bad-ctx"]["error"]["problems"] == [
        {"path": "$.context", "message": "must be a JSON object"}
    ]
    assert results["bad-reply"]["error"]["problems"][0]["path"] == "$.reply_to"
    good_item, bad_item, no_object = results["batch-good"]["results"]
    assert good_item["error"] is None and good_item["flags"][0]["value"] is True
    assert bad_item["request_id"] == "batch-bad"
    assert bad_item["error"]["problems"][0]["path"] == "$.requests[1].flags"
    assert no_object["request_id"] is None and no_object["error"]["code"] == "MALFORMED"

    topics = topics_of(worker)

    def letters() -> dict[int, dict[str, Any]]:
        return {
            letter["offset"]: letter
            for letter in read_topic(worker.brokers, topics.dead_letters, idle_s=0.3)
            if letter.get("topic") == topics.evaluation_requests and letter["partition"] == 0
        }

    by_offset = wait_until(
        lambda: (
            (found := letters())
            and len(set(offsets.values()) & set(found)) == len(offsets)
            and found
        )
    )
    for name, offset in offsets.items():
        letter = by_offset[offset]
        assert letter["code"] == "MALFORMED", name
    assert by_offset[offsets["bytes"]]["payload_base64"] is not None
    assert "not JSON" in by_offset[offsets["json"]]["reason"]
    assert [p["path"] for p in by_offset[offsets["batch"]]["problems"]] == [
        "$.requests[1].flags",
        "$.requests[2]",
    ]
