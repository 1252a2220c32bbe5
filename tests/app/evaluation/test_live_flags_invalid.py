"""A record written straight to `flags-changelog` by another producer is never served unless
it compiles: replicas apply records without parsing them (the decider validated what it
wrote), so the check is the compile's, and the flag keeps its last valid version."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer

from app.infra.records import AppliedChange, ChangeOp, changelog_headers, dumps
from app.infra.settings import Settings
from app.infra.topics import partition_for
from tests.agents.test_bad_records import metric
from tests.conftest import SDK_KEY, Worker, flag, wait_until
from tests.worker_topics import topics_of

ENVIRONMENT = "development"  # the worker fixture's SDK key evaluates this environment
INVALID = {"state": "ENABLED", "variants": {"on": True, "off": "no"}, "defaultVariant": "off"}


def write_straight(
    worker: Worker,
    value: bytes,
    headers: list[tuple[str, bytes]] | None = None,
    partition: int | None = None,
) -> None:
    """Append a record to a changelog partition (default: the environment's own), as a
    foreign producer."""
    if partition is None:
        partition = partition_for(ENVIRONMENT, Settings.from_env().flag_change_partitions)

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=worker.brokers)
        await producer.start()
        try:
            await producer.send_and_wait(
                topics_of(worker).flags_changelog,
                value,
                key=ENVIRONMENT.encode(),
                partition=partition,
                headers=headers,
            )
        finally:
            await producer.stop()

    asyncio.run(run())


def forged(key: str, seq: int, version: int, definition: Any) -> AppliedChange:
    now = time.time()
    return AppliedChange(
        str(uuid.uuid4()), ENVIRONMENT, key, ChangeOp.PUT, seq, version, definition, "x", now, now
    )


def evaluate(worker: Worker, key: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{worker.url}/ofrep/v1/evaluate/flags/{key}",
        data=b'{"context": {}}',
        headers={"Authorization": f"Bearer {SDK_KEY}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def applied_version(worker: Worker, key: str) -> int:
    """The version the worker's table holds (the flag's ETag)."""
    return int(worker.admin().flag(ENVIRONMENT, key).headers["ETag"].strip('"'))


def test_an_invalid_record_written_straight_to_the_changelog_is_never_served(
    broker: str, worker: Worker
) -> None:
    key = "forged-" + uuid.uuid4().hex[:8]
    admin = worker.admin()
    admin.put(ENVIRONMENT, key, flag(default="on"))
    assert evaluate(worker, key)["value"] is True
    invalid_before = invalid_records(worker)

    # As the decider writes it (its meta header: applied without parsing), an invalid flag.
    seq = admin.environments()[ENVIRONMENT] + 1
    change = forged(key, seq, 2, INVALID)
    write_straight(worker, dumps(change.to_json()), changelog_headers(change))
    wait_until(lambda: applied_version(worker, key) == 2)
    answer = evaluate(worker, key)
    assert (answer["value"], answer["variant"], answer["reason"]) == (True, "on", "STATIC")

    # The same header, and a value that is not even JSON.
    change = forged(key, seq + 1, 3, INVALID)
    write_straight(worker, b"\xff not json", changelog_headers(change))
    wait_until(lambda: applied_version(worker, key) == 3)
    assert evaluate(worker, key)["value"] is True

    # No header (decoded whole, as records from before the header are): invalid again.
    change = forged(key, seq + 2, 4, INVALID)
    write_straight(worker, dumps(change.to_json()))
    wait_until(lambda: applied_version(worker, key) == 4)
    assert evaluate(worker, key)["value"] is True

    # A valid record is served: the check refuses only what does not compile.
    admin.put(ENVIRONMENT, key, flag(default="off"))
    assert evaluate(worker, key)["value"] is False
    # Each refused version was counted (an operator sees a forged or broken record).
    assert invalid_records(worker) - invalid_before == 3


def invalid_records(worker: Worker) -> float:
    return metric(worker.metrics(), "flagstream_changelog_records_total", result="invalid")
