"""Exposures: exactly one per evaluation of an experiment flag that resolves a variant for a
targeting key, on every path; none for other flags."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from typing import Any

from aiokafka import ConsumerRecord

from app.control.client import AdminClient
from app.evaluation.client import EvaluationClient
from app.evaluation.records import EvaluationResult
from app.infra.topics import partition_of
from tests.conftest import SDK_KEY, Worker, flag, read_records, read_topic, wait_until
from tests.worker_topics import topics_of

EXPOSURE_PARTITIONS = 8  # the default FLAGSTREAM_EXPOSURE_PARTITIONS
EXPERIMENT = flag(
    "off",
    targeting={"fractional": [["on", 50], ["off", 50]]},
    metadata={"experiment": True, "experimentKey": "exp-1"},
)


def exposures_of(worker: Worker, env: str) -> list[dict[str, Any]]:
    topic = topics_of(worker).exposures
    return [
        e
        for e in read_topic(worker.brokers, topic, EXPOSURE_PARTITIONS, idle_s=0.3)
        if e["environment"] == env
    ]


def evaluate_over_kafka(
    worker: Worker, env: str, contexts: list[dict[str, Any]]
) -> list[EvaluationResult]:
    async def run() -> list[EvaluationResult]:
        async with EvaluationClient(
            worker.brokers, topics=topics_of(worker), timeout_s=30, fetch_max_wait_ms=10
        ) as client:
            return await client.evaluate_many(env, contexts)

    return asyncio.run(run())


def test_one_exposure_per_experiment_evaluation_over_kafka(
    worker: Worker, broker: str, env: str
) -> None:
    admin = worker.admin()
    admin.put(env, "experiment", EXPERIMENT)
    admin.put(env, "plain", flag("on", targeting={"fractional": [["on", 50], ["off", 50]]}))
    admin.put(env, "stopped", {**EXPERIMENT, "state": "DISABLED"})
    contexts = [{"targetingKey": f"user-{i}"} for i in range(40)] + [
        {"email": "anonymous@example.com"}
    ]
    results = evaluate_over_kafka(worker, env, contexts)
    results += evaluate_over_kafka(worker, env, contexts[:10])  # evaluated again: exposed again

    exposures = wait_until(
        lambda: len(found := exposures_of(worker, env)) >= 50 and found, timeout_s=15
    )
    assert len(exposures) == 50, (
        "40 + 10 evaluations with a targeting key; none for plain, stopped or anonymous"
    )
    assert {e["flag"] for e in exposures} == {"experiment"}
    assert len({e["exposure_id"] for e in exposures}) == 50
    assert Counter(e["targeting_key"] for e in exposures) == Counter(
        [f"user-{i}" for i in range(40)] + [f"user-{i}" for i in range(10)]
    )
    variants = {
        c["targetingKey"]: r.flags["experiment"].variant
        for c, r in zip(contexts[:40], results[:40], strict=True)
    }
    for exposure in exposures:
        assert exposure["variant"] == variants[exposure["targeting_key"]]
        assert (exposure["flag_version"], exposure["source"], exposure["schema"]) == (1, "kafka", 1)
        assert exposure["experiment"] == "exp-1", "named by the flag's experimentKey"


def test_exposures_carry_the_version_evaluated(worker: Worker, broker: str, env: str) -> None:
    admin = worker.admin()
    admin.put(env, "experiment", EXPERIMENT)
    evaluate_over_kafka(worker, env, [{"targetingKey": "before"}])
    admin.put(env, "experiment", {**EXPERIMENT, "defaultVariant": "on"})
    evaluate_over_kafka(worker, env, [{"targetingKey": "after"}])
    exposures = wait_until(lambda: len(found := exposures_of(worker, env)) >= 2 and found)
    assert {e["targeting_key"]: e["flag_version"] for e in exposures} == {"before": 1, "after": 2}


def test_one_exposure_per_experiment_evaluation_over_ofrep(worker: Worker, broker: str) -> None:
    """OFREP serves the SDK key's environment, `development`; the flag key is this test's own."""
    key = "ofrep-experiment-" + uuid.uuid4().hex[:8]
    worker.admin().put("development", key, EXPERIMENT)
    sdk = AdminClient(worker.url, SDK_KEY)
    variants = {}
    for i in range(12):
        body = {"context": {"targetingKey": f"ofrep-user-{i}"}}
        reply = sdk.request("POST", f"/ofrep/v1/evaluate/flags/{key}", body)
        assert reply.status == 200, reply.body
        variants[f"ofrep-user-{i}"] = reply.body["variant"]
    bulk = sdk.request(
        "POST", "/ofrep/v1/evaluate/flags", {"context": {"targetingKey": "ofrep-user-0"}}
    )
    assert bulk.status == 200
    anonymous = sdk.request("POST", f"/ofrep/v1/evaluate/flags/{key}", {"context": {}})
    assert anonymous.status == 200

    def mine() -> list[dict[str, Any]]:
        return [e for e in exposures_of(worker, "development") if e["flag"] == key]

    exposures = wait_until(lambda: len(found := mine()) >= 13 and found)
    assert len(exposures) == 13, "12 single evaluations + 1 bulk; none without a targeting key"
    assert len({e["exposure_id"] for e in exposures}) == 13
    assert {e["source"] for e in exposures} == {"ofrep"}
    for exposure in exposures:
        assert exposure["variant"] == variants[exposure["targeting_key"]]


def test_many_exposures_are_produced_once_each_keyed_and_partitioned_like_kafka(
    worker: Worker, broker: str, env: str
) -> None:
    """10,000 exposures: many full batches per partition, each record where Kafka puts it."""
    admin = worker.admin()
    admin.put(env, "exp-a", EXPERIMENT)
    admin.put(env, "exp-b", {**EXPERIMENT, "metadata": {"experiment": True}})
    for start in range(0, 5000, 500):  # 500 requests a record keeps each result record < 1 MB
        contexts = [{"targetingKey": f"many-{start + i}"} for i in range(500)]
        evaluate_over_kafka(worker, env, contexts)

    def mine() -> list[ConsumerRecord[bytes, bytes]]:
        records = read_records(broker, topics_of(worker).exposures, EXPOSURE_PARTITIONS, idle_s=0.5)
        return [r for r in records if json.loads(r.value)["environment"] == env]

    records = wait_until(lambda: len(found := mine()) >= 10_000 and found, 30)
    exposures = [json.loads(record.value) for record in records]
    assert len(records) == 10_000
    assert len({e["exposure_id"] for e in exposures}) == 10_000
    assert Counter(e["flag"] for e in exposures) == {"exp-a": 5000, "exp-b": 5000}
    for record, exposure in zip(records, exposures, strict=True):
        assert record.key == exposure["targeting_key"].encode()
        assert record.partition == partition_of(record.key, EXPOSURE_PARTITIONS)
        assert record.timestamp == int(exposure["timestamp"] * 1000)
