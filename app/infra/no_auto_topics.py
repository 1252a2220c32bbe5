"""Our Kafka clients never create a topic by asking for its metadata.

A Kafka broker with `auto.create.topics.enable` (the embedded broker always has it, and
cannot turn it off) creates any topic a client asks metadata for, with the broker's default
partition count (4 on the embedded broker). When a broker comes back empty, a worker's producers
and consumers ask for their topics' metadata before `ensure_topics` has recreated them, so
`experiment-state` or `exposures` came back with 4 partitions instead of the declared 8, and
the next start refused them (`app.infra.topics.ensure_topics`). Kafka's own advice is to turn
automatic creation off; the Metadata request lets each client say so
(`allow_auto_topic_creation`, Metadata v4+), and the embedded broker honours it. aiokafka sends
True and has no option for it, so its client module's request class is replaced, once, by one
whose default is False. `ensure_topics` stays the only way our topics come to exist.
"""

from __future__ import annotations

import aiokafka.client
from aiokafka.protocol.metadata import MetadataRequest

__all__ = ["refuse_topic_auto_creation"]


class _MetadataWithoutAutoCreation(MetadataRequest):  # type: ignore[misc]  # untyped
    """aiokafka's Metadata request, asking the broker not to create what it asks about."""

    def __init__(
        self, topics: list[str] | None = None, allow_auto_topic_creation: bool | None = False
    ) -> None:
        super().__init__(topics, allow_auto_topic_creation)


def refuse_topic_auto_creation() -> None:
    """Make every aiokafka client of this process ask without creating (idempotent)."""
    aiokafka.client.MetadataRequest = _MetadataWithoutAutoCreation
