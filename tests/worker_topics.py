"""The topic names a test worker uses, for tests that produce or read its topics directly.

A worker's topics are `<FLAGSTREAM_TOPIC_PREFIX>.<topic>`, the prefix defaulting to its app id
(app/infra/topics.py). Tests that start workers under several app ids over one set of topics
pass FLAGSTREAM_TOPIC_PREFIX to each; this reads the same choice back, so a test never spells
a topic name itself.
"""

from __future__ import annotations

from app.infra.topics import Topics
from tests.conftest import Worker

__all__ = ["SHARED_WORKER_TOPICS", "topics_of"]


def topics_of(worker: Worker) -> Topics:
    """The topics `worker` reads and writes."""
    return Topics.named(worker.extra_env.get("FLAGSTREAM_TOPIC_PREFIX") or worker.app_id)


# The topics of tests/conftest.py's module-wide `worker` fixture (app id "flagstream-test"),
# for helpers that are handed only the broker.
SHARED_WORKER_TOPICS = Topics.named("flagstream-test")
