"""Every topic flagstream reads or writes: name, partitions, retention, in one place.

We create topics ourselves (`ensure_topics`) instead of trusting broker auto-creation: Kafka
may have it disabled, and the embedded broker would silently make 4 partitions, breaking the
co-partitioning of `flag-changes` with the flag table changelog.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2

from app.infra.kafka_security import kafka_client_options
from app.infra.settings import Settings

__all__ = [
    "DEAD_LETTERS",
    "EVALUATION_REQUESTS",
    "EVALUATION_RESULTS",
    "EXPERIMENT_STATE",
    "EXPERIMENT_STATS",
    "EXPOSURES",
    "FLAGS_CHANGELOG",
    "FLAG_CHANGES",
    "METRIC_EVENTS",
    "TopicSpec",
    "ensure_topics",
    "partition_for",
    "partition_of",
    "topic_specs",
]

log = logging.getLogger(__name__)

FLAG_CHANGES = "flag-changes"
FLAGS_CHANGELOG = "flags-changelog"
DEAD_LETTERS = "dead-letters"
EVALUATION_REQUESTS = "evaluation-requests"
EVALUATION_RESULTS = "evaluation-results"
EXPOSURES = "exposures"
METRIC_EVENTS = "metric-events"
EXPERIMENT_STATE = "experiment-state"
EXPERIMENT_STATS = "experiment-stats"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What `ensure_topics` creates: the partitions and config a topic must have."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


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
    """
    partitions = settings.flag_change_partitions
    forever = str(settings.flag_changes_retention_ms)
    return (
        TopicSpec(FLAG_CHANGES, partitions, {"retention.ms": forever}),
        TopicSpec(FLAGS_CHANGELOG, partitions, {"retention.ms": forever}),
        TopicSpec(DEAD_LETTERS, 1, {"retention.ms": str(settings.dead_letters_retention_ms)}),
        TopicSpec(EVALUATION_REQUESTS, settings.evaluation_partitions),
        TopicSpec(EVALUATION_RESULTS, settings.evaluation_partitions),
        TopicSpec(
            EXPOSURES,
            settings.exposure_partitions,
            {"retention.ms": str(settings.exposures_retention_ms)},
        ),
        TopicSpec(
            METRIC_EVENTS,
            settings.exposure_partitions,  # co-partitioned with `exposures`: the same setting
            {"retention.ms": str(settings.exposures_retention_ms)},
        ),
        # The attribution state's changelog: partition p holds the state of source
        # partition p, newest value per key (compacted), so it can move to another worker.
        TopicSpec(EXPERIMENT_STATE, settings.exposure_partitions, {"cleanup.policy": "compact"}),
        # Each source partition's totals per experiment (compacted): what results merge.
        TopicSpec(EXPERIMENT_STATS, settings.exposure_partitions, {"cleanup.policy": "compact"}),
    )


async def ensure_topics(settings: Settings) -> None:
    """Create the topics that do not exist yet; leave existing ones alone."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap, **kafka_client_options(settings)
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                spec.name, spec.partitions, settings.replication_factor, topic_configs=spec.config
            )
            for spec in topic_specs(settings)
            if spec.name not in existing
        ]
        if missing:
            await admin.create_topics(missing)
            log.info("created topics %s", [t.name for t in missing])
    finally:
        await admin.close()


def partition_for(environment: str, partitions: int) -> int:
    """The partition of `flag-changes` (and of the changelog) that owns `environment`.

    Kafka's default partitioner (murmur2 of the key), so a foreign producer that keys a
    command by its environment with any standard client lands on the same partition.
    """
    return partition_of(environment.encode(), partitions)


def partition_of(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner: murmur2 of the key bytes, sign bit cleared, modulo."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions
