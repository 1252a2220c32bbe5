"""Consumer lag against the real embedded broker, whose end offsets are short of the log's.

A real aiokafka consumer reads part of a partition, then all of it; the collector must count
the records left, then exactly 0 (never negative, though Tansu's ListOffsets answers the start
of the last record batch + 1: 21 here, where the fetch's high watermark says 30). Then every
consumer of a live worker: the flag-change agent's backlog while it decides a slow command,
and each group's lag on each of its partitions, 0 once the worker has read everything.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from app.infra.consumer_lag import ConsumerLag, lag_of
from app.infra.settings import Settings
from app.infra.topics import Topics, partition_for
from tests.conftest import EXPERIMENT, SDK_KEY, Worker, flag, produce, wait_until

ENVIRONMENT = "development"  # the SDK key's


def test_lag_is_zero_when_the_end_or_the_position_is_unknown_or_the_end_is_short() -> None:
    assert lag_of(None, 5) == 0
    assert lag_of(10, None) == 0
    assert lag_of(10, 12) == 0  # Tansu: end = last batch's base + 1 once the batch is read
    assert lag_of(10, 4) == 6


def exported(registry: CollectorRegistry) -> dict[str, float]:
    """The lag samples of group `test`, by partition."""
    return {
        sample.labels["partition"]: sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "flagstream_consumer_lag_records" and sample.labels["group"] == "test"
    }


def test_lag_counts_unread_records_then_zero_on_the_embedded_broker(broker: str) -> None:
    topic = "lag-" + uuid.uuid4().hex[:8]
    # Three separate batches (one produce each): Tansu's end is the third batch's base + 1.
    for batch in range(3):
        produce(broker, topic, [(None, f"{batch}-{i}".encode()) for i in range(10)], partition=0)
    tp = TopicPartition(topic, 0)

    async def run() -> tuple[dict[str, float], dict[str, float]]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=broker, enable_auto_commit=False, fetch_max_wait_ms=10
        )
        await consumer.start()
        registry = CollectorRegistry()
        lag = ConsumerLag()
        registry.register(lag)
        read: dict[TopicPartition, int] = {}
        lag.watch("test", consumer, read.get)
        try:
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            while not read:
                for records in (await consumer.getmany(tp, timeout_ms=100, max_records=5)).values():
                    read[tp] = records[-1].offset + 1
            part_way = exported(registry)
            while read[tp] < 30:
                for records in (await consumer.getmany(tp, timeout_ms=100)).values():
                    read[tp] = records[-1].offset + 1
            return part_way, exported(registry)
        finally:
            await consumer.stop()

    part_way, at_end = asyncio.run(run())
    assert part_way == {"0": 25.0}, part_way
    assert at_end == {"0": 0.0}, at_end


# -- every consumer of a live worker ------------------------------------------------------


def worker_lags(worker: Worker) -> dict[tuple[str, str, str], float]:
    """flagstream_consumer_lag_records of a live worker by (group, topic, partition)."""
    return {
        (s.labels["group"], s.labels["topic"], s.labels["partition"]): s.value
        for family in text_string_to_metric_families(worker.metrics())
        for s in family.samples
        if s.name == "flagstream_consumer_lag_records"
    }


def group_lags(worker: Worker, group: str, topic: str) -> dict[int, float]:
    return {
        int(partition): lag
        for (g, t, partition), lag in worker_lags(worker).items()
        if (g, t) == (group, topic)
    }


def slow_to_decide(env: str, key: str) -> bytes:
    """A valid put whose validation takes a while: a targeting list of 40,000 addresses."""
    emails = [f"user{i}@example.com" for i in range(40_000)]
    targeting = {"if": [{"in": [{"var": "email"}, emails]}, "on", "off"]}
    return command(env, key, flag(targeting=targeting))


def command(env: str, key: str, definition: dict[str, Any]) -> bytes:
    """A flag-change command as a foreign producer writes it (docs/topics.md)."""
    return json.dumps(
        {
            "schema": 1,
            "change_id": uuid.uuid4().hex,
            "environment": env,
            "flag": key,
            "op": "put",
            "definition": definition,
            "actor": "pytest",
            "produced_at": time.time(),
        }
    ).encode()


def test_the_flag_change_agent_lag_counts_the_commands_behind_the_one_it_decides(
    worker: Worker, env: str
) -> None:
    topic = Topics.named(worker.app_id).flag_changes
    partition = partition_for(env, Settings.from_env().flag_change_partitions)
    worker.admin().put(env, "first", flag())  # the agent has decided on this partition
    behind = [command(env, f"quick-{i}", flag()) for i in range(10)]
    records = [slow_to_decide(env, "slow"), *behind]
    produce(worker.brokers, topic, [(env.encode(), r) for r in records], partition=partition)
    # While the slow one is decided, it and the ten behind it are the backlog.
    wait_until(
        lambda: group_lags(worker, "flag-changes", topic).get(partition) == 11.0,
        timeout_s=60,
        interval_s=0.01,
    )
    wait_until(lambda: worker.admin().flag(env, "quick-9").status == 200, timeout_s=60)
    wait_until(lambda: group_lags(worker, "flag-changes", topic).get(partition) == 0.0)


def test_every_consumer_of_a_worker_exports_its_lag_and_reads_zero_once_caught_up(
    worker: Worker, env: str
) -> None:
    settings, topics = Settings.from_env(), Topics.named(worker.app_id)
    worker.admin().put(ENVIRONMENT, "lag-experiment", EXPERIMENT)
    for subject in range(20):  # exposures, folded by the attribution, published as stats
        body = json.dumps({"context": {"targetingKey": f"user-{subject}"}}).encode()
        request = urllib.request.Request(
            f"{worker.url}/ofrep/v1/evaluate/flags/lag-experiment",
            data=body,
            headers={"Authorization": f"Bearer {SDK_KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
    every = {
        ("flag-changes", topics.flag_changes): settings.flag_change_partitions,
        ("flag-changelog", topics.flags_changelog): settings.flag_change_partitions,
        ("experiments", topics.exposures): settings.exposure_partitions,
        ("experiments", topics.metric_events): settings.exposure_partitions,
        ("experiment-stats", topics.experiment_stats): settings.exposure_partitions,
        ("dead-letters", topics.dead_letters): 1,
    }

    def all_caught_up() -> bool:
        lags = {key: group_lags(worker, *key) for key in every}
        exported = all(len(lags[key]) == partitions for key, partitions in every.items())
        return exported and {
            lag for by_partition in lags.values() for lag in by_partition.values()
        } == {0.0}

    wait_until(all_caught_up, timeout_s=60)
