"""Every topic flagstream reads or writes: name, partitions, retention, in one place.

Topic names are `<prefix>.<topic>` (`flagstream.flag-changes`): the prefix is
FLAGSTREAM_TOPIC_PREFIX, by default the app id, which also names every consumer group (Faust's
`<app id>`, `<app id>-evaluations`, `<app id>-experiments`). So two deployments on one cluster
(staging and production, two teams) never read each other's commands or serve each other's
flags; a dot separates the prefix because Kafka forbids neither it nor the dash in names and
ACLs can grant a whole deployment with one prefixed pattern (`flagstream.`). The prefix is a
setting of its own so a deployment can move to new consumer groups (a new app id) over the
same topics.

We create topics ourselves (`ensure_topics`) instead of trusting broker auto-creation: Kafka
may have it disabled, and the embedded broker would silently make 4 partitions, breaking the
co-partitioning of `flag-changes` with the flag table changelog. A topic that exists already
is checked against what we declare (docs/topics.md, "Checked at start").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic, config_resource
from aiokafka.errors import for_code
from aiokafka.partitioner import murmur2

from app.infra.kafka_security import kafka_client_options
from app.infra.settings import Settings

__all__ = [
    "TOPIC_ALREADY_EXISTS",
    "TopicMismatchError",
    "TopicSpec",
    "Topics",
    "create_failures",
    "ensure_topics",
    "mismatches",
    "partition_for",
    "partition_of",
    "topic_specs",
]

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = 36  # Kafka's error code: another worker created it first, not a failure
FATAL_CONFIGS = frozenset({"cleanup.policy"})  # a compacted log is another log: fatal if wrong


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic names of one deployment, `<prefix>.<topic>`; build it with `Topics.of`."""

    prefix: str
    flag_changes: str
    flags_changelog: str
    dead_letters: str
    evaluation_requests: str
    evaluation_results: str
    exposures: str
    metric_events: str
    experiment_state: str
    experiment_stats: str

    @classmethod
    def named(cls, prefix: str) -> Topics:
        """The names under `prefix` (tests and benchmarks name a worker's topics this way)."""
        return cls(
            prefix,
            f"{prefix}.flag-changes",
            f"{prefix}.flags-changelog",
            f"{prefix}.dead-letters",
            f"{prefix}.evaluation-requests",
            f"{prefix}.evaluation-results",
            f"{prefix}.exposures",
            f"{prefix}.metric-events",
            f"{prefix}.experiment-state",
            f"{prefix}.experiment-stats",
        )

    @classmethod
    def of(cls, settings: Settings) -> Topics:
        """The topics of the deployment `settings` describe (FLAGSTREAM_TOPIC_PREFIX)."""
        return cls.named(settings.topic_prefix)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What `ensure_topics` creates: the partitions and config a topic must have.

    `exact_partitions`: whether another partition count on an existing topic breaks us
    (co-partitioned pairs, readers that read partitions 0..n-1) or only changes parallelism.
    """

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    exact_partitions: bool = True


class TopicMismatchError(RuntimeError):
    """A topic could not be created, or exists unlike what we declare: the worker cannot start."""


def topic_specs(settings: Settings) -> tuple[TopicSpec, ...]:
    """The topics of this deployment.

    `flag-changes` and `flags-changelog` are keyed by environment and must have the same
    partition count: the agent deciding partition p of the commands writes partition p of the
    changelog, so one environment's changes stay in one totally ordered log.
    The changelog is not compacted: it carries every applied version, so a worker rebuilt
    from it has the same history and change-stream log as every other worker.
    `exposures` and `metric-events` are both keyed by targeting key and must have the same
    partition count (one setting, one retention), so a subject's exposures and events meet
    in one partition number for the consumer that joins them.
    Only the evaluation topics may have more partitions than declared: requests are shared by
    a consumer group and results are read from every partition the broker reports.
    """
    topics = Topics.of(settings)
    partitions = settings.flag_change_partitions
    forever = str(settings.flag_changes_retention_ms)
    never_compacted = {"retention.ms": forever, "cleanup.policy": "delete"}
    return (
        TopicSpec(topics.flag_changes, partitions, never_compacted),
        TopicSpec(topics.flags_changelog, partitions, never_compacted),
        # One partition: the writers wait for their letters on partition 0.
        TopicSpec(
            topics.dead_letters, 1, {"retention.ms": str(settings.dead_letters_retention_ms)}
        ),
        TopicSpec(topics.evaluation_requests, settings.evaluation_partitions, {}, False),
        TopicSpec(topics.evaluation_results, settings.evaluation_partitions, {}, False),
        TopicSpec(
            topics.exposures,
            settings.exposure_partitions,
            {"retention.ms": str(settings.exposures_retention_ms)},
        ),
        TopicSpec(
            topics.metric_events,
            settings.exposure_partitions,  # co-partitioned with `exposures`: the same setting
            {"retention.ms": str(settings.exposures_retention_ms)},
        ),
        # The attribution state's changelog: partition p holds the state of source
        # partition p, newest value per key (compacted), so it can move to another worker.
        TopicSpec(
            topics.experiment_state, settings.exposure_partitions, {"cleanup.policy": "compact"}
        ),
        # Each source partition's totals per experiment (compacted): what results merge.
        TopicSpec(
            topics.experiment_stats, settings.exposure_partitions, {"cleanup.policy": "compact"}
        ),
    )


async def ensure_topics(settings: Settings) -> None:
    """Create the topics that do not exist yet and check the ones that do.

    Raises `TopicMismatchError` naming the topic, what we expected and what the broker has, for
    a creation the broker refused and for an existing topic whose partition count or
    compaction would break us; lesser differences (retention) are logged as warnings.
    """
    specs = topic_specs(settings)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap, **kafka_client_options(settings)
    )
    try:
        await admin.start()  # inside: a failed bootstrap still closes what it opened
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            await _create(admin, missing, settings.replication_factor)
        # Only topics that existed before: a topic created a moment ago may not be in every
        # broker's metadata yet (and asking the embedded broker for one creates it).
        present = [spec for spec in specs if spec.name in existing]
        if present:
            _judge(await _found(admin, present), present)
    finally:
        await admin.close()


async def _create(
    admin: AIOKafkaAdminClient, missing: Sequence[TopicSpec], replication_factor: int
) -> None:
    """Create `missing`, raising on any per-topic error but "already exists"."""
    brokers = len((await admin.describe_cluster())["brokers"])
    if replication_factor > brokers:
        # Kafka refuses this per topic; the embedded broker accepts it and ignores it.
        raise TopicMismatchError(
            f"FLAGSTREAM_REPLICATION_FACTOR is {replication_factor} but the cluster has"
            f" {brokers} broker(s): topics {[s.name for s in missing]} cannot be created"
        )
    response = await admin.create_topics(
        [
            NewTopic(s.name, s.partitions, replication_factor, topic_configs=s.config)
            for s in missing
        ]
    )
    failures = create_failures(response.topic_errors)
    if failures:
        raise TopicMismatchError("; ".join(failures))
    log.info("created topics %s", [s.name for s in missing])


def create_failures(topic_errors: Iterable[Sequence[Any]]) -> list[str]:
    """What a CreateTopics response refused, one sentence per topic ("already exists" is not
    a failure: another worker created the topic between our listing and our request)."""
    failures = []
    for topic, code, *message in topic_errors:
        if code and code != TOPIC_ALREADY_EXISTS:
            detail = f": {message[0]}" if message and message[0] else ""
            failures.append(f"topic {topic!r} was not created ({for_code(code).__name__}{detail})")
    return failures


@dataclass(frozen=True, slots=True)
class FoundTopic:
    """What the broker reports of an existing topic: partitions and the configs we asked."""

    partitions: int
    config: dict[str, str]


async def _found(admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec]) -> dict[str, FoundTopic]:
    """Partition counts (metadata) and the declared configs (DescribeConfigs) of `specs`."""
    described = await admin.describe_topics([s.name for s in specs])
    partitions = {t["topic"]: len(t["partitions"]) for t in described}
    # Every config of the topic (None), filtered here: the embedded broker drops the
    # connection when asked for named configs.
    topic = config_resource.ConfigResourceType.TOPIC
    resources = [config_resource.ConfigResource(topic, s.name, None) for s in specs if s.config]
    configs: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources) if resources else []:
        for error_code, _message, _type, name, entries, *_ in response.resources:
            if not error_code:
                configs[name] = {entry[0]: entry[1] for entry in entries}
    return {s.name: FoundTopic(partitions.get(s.name, 0), configs.get(s.name, {})) for s in specs}


def mismatches(spec: TopicSpec, found: FoundTopic) -> tuple[list[str], list[str]]:
    """(fatal, warnings): how an existing topic differs from its spec, one sentence each.

    Fatal: the partition count of a topic whose count we rely on, and `cleanup.policy`.
    A warning: another retention (an operator may keep exposures longer), a config the broker
    did not report (the embedded broker reports only configs set on the topic), and more
    evaluation partitions than declared.
    """
    fatal: list[str] = []
    warnings: list[str] = []
    if found.partitions != spec.partitions:
        sentence = (
            f"topic {spec.name!r}: expected {spec.partitions} partitions, found {found.partitions}"
        )
        (fatal if spec.exact_partitions else warnings).append(sentence)
    for key, expected in spec.config.items():
        value = found.config.get(key)
        if value is None:
            warnings.append(f"topic {spec.name!r}: {key} not reported, expected {expected}")
        elif value != expected:
            sentence = f"topic {spec.name!r}: expected {key}={expected}, found {key}={value}"
            (fatal if key in FATAL_CONFIGS else warnings).append(sentence)
    return fatal, warnings


def _judge(found: dict[str, FoundTopic], specs: Sequence[TopicSpec]) -> None:
    """Log every warning, then raise with every fatal difference at once."""
    fatal: list[str] = []
    for spec in specs:
        errors, warnings = mismatches(spec, found[spec.name])
        fatal += errors
        for warning in warnings:
            log.warning("%s", warning)
    if fatal:
        raise TopicMismatchError(
            "existing topics differ from what this deployment declares (docs/topics.md): "
            + "; ".join(fatal)
        )


def partition_for(environment: str, partitions: int) -> int:
    """The partition of `flag-changes` (and of the changelog) that owns `environment`.

    Kafka's default partitioner (murmur2 of the key), so a foreign producer that keys a
    command by its environment with any standard client lands on the same partition.
    """
    return partition_of(environment.encode(), partitions)


def partition_of(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner: murmur2 of the key bytes, sign bit cleared, modulo."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions
