"""Topics: named after the deployment, created explicitly, and checked when they exist.

`metric-events` is co-partitioned with `exposures` (that a targeting key lands on one
partition number in both: tests/web/test_metric_events_api.py). Every topic and group name
follows the app id (or FLAGSTREAM_TOPIC_PREFIX), so two deployments share a cluster without
reading each other's records. `ensure_topics` raises on a topic the broker refused and on an
existing topic whose partitions or compaction we cannot run on; the embedded broker (Tansu)
accepts every CreateTopics request (a replication factor above its one broker, any config
value, zero partitions), so what a broker refuses is tested on the response shape, and the
replication factor is checked against the cluster before creating.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.infra.settings import Settings
from app.infra.topics import (
    TopicMismatchError,
    Topics,
    create_failures,
    ensure_topics,
    topic_specs,
)
from tests.conftest import Worker, flag, wait_until
from tests.worker_topics import topics_of

EXIT_WITHIN_S = 60.0  # a worker that cannot run on the topics stops before it starts anything


def partition_counts(brokers: str, topics: tuple[str, ...]) -> dict[str, int]:
    async def run() -> dict[str, int]:
        producer = AIOKafkaProducer(bootstrap_servers=brokers)
        await producer.start()
        try:
            return {topic: len(await producer.partitions_for(topic)) for topic in topics}
        finally:
            await producer.stop()

    return asyncio.run(run())


def settings_for(broker: str, **changes: object) -> Settings:
    """Settings of a deployment of its own on `broker` (a fresh prefix: fresh topics)."""
    prefix = f"topics-{uuid.uuid4().hex[:8]}"
    base = dataclasses.replace(Settings.from_env(), brokers=(broker,), topic_prefix=prefix)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def create(broker: str, *topics: NewTopic) -> None:
    """Topics made by someone else before the worker came (an operator, another version)."""

    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker)
        await admin.start()
        try:
            await admin.create_topics(list(topics))
        finally:
            await admin.close()

    asyncio.run(run())


def topic_names(broker: str) -> set[str]:
    async def run() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker)
        await admin.start()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    return asyncio.run(run())


def joined_groups(worker: Worker) -> set[str]:
    """The consumer groups the worker's clients joined, as aiokafka logs each join (the
    embedded broker lists no group of a worker in ListGroups and cannot encode DescribeGroups
    for them, so the broker cannot be asked)."""
    log = worker.log_path.read_text(errors="replace")
    return set(re.findall(r"Joined group '([^']+)'", log))


def test_metric_events_has_the_partition_count_of_exposures(broker: str) -> None:
    """Not the broker's auto-created 4: the exposure setting, here 5, for both topics."""
    settings = settings_for(broker, exposure_partitions=5)
    asyncio.run(ensure_topics(settings))
    topics = Topics.of(settings)
    counts = partition_counts(broker, (topics.exposures, topics.metric_events))
    assert counts == {topics.exposures: 5, topics.metric_events: 5}


def test_every_topic_is_named_under_the_prefix_which_defaults_to_the_app_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLAGSTREAM_APP_ID", "staging")
    monkeypatch.delenv("FLAGSTREAM_TOPIC_PREFIX", raising=False)
    staging = Settings.from_env()
    assert {spec.name.partition(".")[0] for spec in topic_specs(staging)} == {"staging"}
    assert Topics.of(staging).flag_changes == "staging.flag-changes"
    monkeypatch.setenv("FLAGSTREAM_TOPIC_PREFIX", "shared")
    assert Topics.of(Settings.from_env()).flags_changelog == "shared.flags-changelog"


def test_a_create_error_is_raised_with_the_topic_and_the_error_but_already_exists_is_not() -> None:
    """What a real Kafka answers per topic (CreateTopics v3: topic, error code, message):
    create_topics does not raise, so ensure_topics once logged these as created."""
    refused = create_failures(
        [
            ("a.flag-changes", 38, "Replication factor: 3 larger than available brokers: 1."),
            ("a.dead-letters", 36, "Topic 'a.dead-letters' already exists."),
            ("a.exposures", 0, None),
            ("a.metric-events", 40, None),
        ]
    )
    assert refused == [
        "topic 'a.flag-changes' was not created (InvalidReplicationFactorError: Replication"
        " factor: 3 larger than available brokers: 1.)",
        "topic 'a.metric-events' was not created (InvalidConfigurationError)",
    ]


def test_a_replication_factor_above_the_brokers_is_refused_before_creating(
    broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The embedded broker would accept it (and keep one copy); Kafka refuses it per topic."""
    settings = settings_for(broker, replication_factor=3)
    with caplog.at_level(logging.INFO), pytest.raises(TopicMismatchError) as raised:
        asyncio.run(ensure_topics(settings))
    assert "FLAGSTREAM_REPLICATION_FACTOR is 3 but the cluster has 1 broker(s)" in str(raised.value)
    assert Topics.of(settings).flag_changes in str(raised.value)
    assert "created topics" not in caplog.text
    assert not [name for name in topic_names(broker) if name.startswith(settings.topic_prefix)]


def test_a_topic_with_the_wrong_partition_count_stops_the_worker_with_what_differs(
    broker: str, tmp_path: Path
) -> None:
    """`flag-changes` with 3 partitions against FLAGSTREAM_FLAG_CHANGE_PARTITIONS=4: the
    co-partitioning with the changelog would break, so the worker does not start."""
    app_id = f"wrong-partitions-{uuid.uuid4().hex[:8]}"
    topics = Topics.named(app_id)
    create(broker, NewTopic(topics.flag_changes, 3, 1))
    worker = Worker(broker, tmp_path / "data", app_id)
    worker.launch()
    assert worker.process is not None
    try:
        code = worker.process.wait(EXIT_WITHIN_S)
    finally:
        worker.stop()
    log = worker.log_path.read_text(errors="replace")
    assert code != 0
    assert f"topic '{topics.flag_changes}': expected 4 partitions, found 3" in log, log[-2000:]


def test_compaction_that_differs_is_fatal_and_retention_a_warning(
    broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(broker)
    topics = Topics.of(settings)
    create(
        broker,
        NewTopic(topics.experiment_state, 8, 1, topic_configs={"cleanup.policy": "delete"}),
        NewTopic(topics.exposures, 8, 1, topic_configs={"retention.ms": "1000"}),
    )
    with pytest.raises(TopicMismatchError) as raised:
        asyncio.run(ensure_topics(settings))
    message = str(raised.value)
    assert (
        f"topic '{topics.experiment_state}': expected cleanup.policy=compact, found"
        " cleanup.policy=delete"
    ) in message
    assert "retention" not in message
    assert (
        f"topic '{topics.exposures}': expected retention.ms={settings.exposures_retention_ms},"
        " found retention.ms=1000"
    ) in caplog.text


def test_more_evaluation_partitions_than_declared_are_only_a_warning(
    broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(broker)
    topics = Topics.of(settings)
    create(broker, NewTopic(topics.evaluation_requests, 12, 1))
    asyncio.run(ensure_topics(settings))  # does not raise
    assert f"topic '{topics.evaluation_requests}': expected 8 partitions, found 12" in caplog.text
    asyncio.run(ensure_topics(settings))  # and again, on topics it made itself: nothing fatal


def test_two_deployments_on_one_broker_have_their_own_topics_groups_and_flags(
    broker: str, cluster: list[Worker], tmp_path: Path
) -> None:
    """A flag written to one is never seen by the other; each has its own topics and groups."""
    blue = Worker(broker, tmp_path / "blue", f"blue-{uuid.uuid4().hex[:6]}").start()
    cluster.append(blue)
    green = Worker(broker, tmp_path / "green", f"green-{uuid.uuid4().hex[:6]}").start()
    cluster.append(green)
    blue.admin().put("development", "only-blue", flag(default="on"))
    green.admin().put("development", "only-green", flag(default="on"))
    # Each sees its own write (a write answers once its own table holds it) ...
    assert set(blue.admin().flags("development")) == {"only-blue"}
    # ... and green, having applied its own later change, never got blue's.
    assert set(green.admin().flags("development")) == {"only-green"}

    topics = topic_names(broker)
    for worker in (blue, green):
        own = {getattr(topics_of(worker), f.name) for f in dataclasses.fields(Topics)[1:]}
        assert own <= topics, own - topics
    assert not {name for name in topics if name.startswith(("flag-changes", "flags-changelog"))}
    # Faust's group is the app id; ours add a suffix. Each worker joined only its own.
    for worker, other in ((blue, green), (green, blue)):
        wanted = {worker.app_id, f"{worker.app_id}-evaluations"}
        wait_until(lambda w=worker, g=wanted: g <= joined_groups(w), timeout_s=60)  # type: ignore[misc]
        assert not {g for g in joined_groups(worker) if g.startswith(other.app_id)}
