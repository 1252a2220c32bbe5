"""A worker starting with thousands of flags: ready, then every flag answered at once.

The flags are written straight to `flags-changelog` as the decider writes them (thousands of
admin writes would take minutes), a fresh worker reads them at start, and its first
evaluations after `/readyz` are timed over real HTTP: none may wait for its environment to be
compiled (the old design compiled an environment on its first evaluation, on the event loop).
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import time
import uuid
from pathlib import Path
from typing import Any

from app.infra.records import AppliedChange, ChangeOp, dumps
from app.infra.settings import Settings
from app.infra.topics import Topics, ensure_topics, partition_for
from tests.conftest import SDK_KEY, Worker, produce

FLAGS = 3000
ENVIRONMENT = "startup"
CONTEXT = {"targetingKey": "user-1", "tier": "pro", "email": "a@corp.example", "app": "3.4.0"}
FIRST_ANSWER_S = 0.5  # a loaded machine's one request; the old design took the whole compile


def definition(i: int) -> dict[str, Any]:
    """A flag with targeting (an if/else chain over in, ends_with, sem_ver), answer known:
    CONTEXT is a pro user, so each flag's first branch serves `{i}-pro`."""
    rule: dict[str, Any] = {
        "if": [
            {"in": [{"var": "tier"}, ["pro", "enterprise"]]},
            "pro",
            {"ends_with": [{"var": "email"}, "@corp.example"]},
            "staff",
            {"sem_ver": [{"var": "app"}, ">=", f"{i % 5}.0.0"]},
            "recent",
            "off",
        ]
    }
    variants = {name: f"{i}-{name}" for name in ("pro", "staff", "recent", "off")}
    return {"state": "ENABLED", "variants": variants, "defaultVariant": "off", "targeting": rule}


APP_ID = "flagstream-startup"  # and the topic prefix the changelog is written under


def write_changelog(broker: str) -> None:
    """Every flag as an applied change on the environment's changelog partition."""
    settings = dataclasses.replace(Settings.from_env(), brokers=(broker,), topic_prefix=APP_ID)
    asyncio.run(ensure_topics(settings))
    now = time.time()
    records = [
        (
            ENVIRONMENT.encode(),
            dumps(
                AppliedChange(
                    str(uuid.uuid4()),
                    ENVIRONMENT,
                    f"flag-{i:05d}",
                    ChangeOp.PUT,
                    i + 1,
                    1,
                    definition(i),
                    "seed",
                    now,
                    now,
                ).to_json()
            ),
        )
        for i in range(FLAGS)
    ]
    partition = partition_for(ENVIRONMENT, settings.flag_change_partitions)
    produce(broker, Topics.of(settings).flags_changelog, records, partition)


def post(connection: http.client.HTTPConnection, path: str) -> tuple[int, Any]:
    body = json.dumps({"context": CONTEXT})
    headers = {"Authorization": f"Bearer {SDK_KEY}", "Content-Type": "application/json"}
    connection.request("POST", path, body, headers)
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def test_a_worker_with_thousands_of_flags_answers_each_at_once_after_ready(
    broker: str, cluster: list[Worker], tmp_path: Path
) -> None:
    write_changelog(broker)
    worker = Worker(broker, tmp_path / "data", APP_ID, FLAGSTREAM_SDK_KEYS=f"{SDK_KEY}=startup")
    cluster.append(worker)
    worker.start(timeout_s=120)

    connection = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=60)
    try:
        took = []
        for i in range(0, FLAGS, FLAGS // 50):  # the first evaluations, across the flags
            started = time.perf_counter()
            status, answer = post(connection, f"/ofrep/v1/evaluate/flags/flag-{i:05d}")
            took.append(time.perf_counter() - started)
            assert (status, answer["value"]) == (200, f"{i}-pro"), answer
        assert took[0] < FIRST_ANSWER_S, f"the first evaluation took {took[0]:.2f}s"
        assert max(took) < FIRST_ANSWER_S, f"the slowest took {max(took):.2f}s"

        status, bulk = post(connection, "/ofrep/v1/evaluate/flags")
    finally:
        connection.close()
    assert status == 200
    values = {item["key"]: item["value"] for item in bulk["flags"]}
    assert values == {f"flag-{i:05d}": f"{i}-pro" for i in range(FLAGS)}
