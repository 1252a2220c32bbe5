"""A catch-up is ready before RocksDB has its records: the replication writes them after
ready, a batch per loop turn, until what a restart would read from is where it applied."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from app.infra.metrics import Metrics
from app.infra.records import AppliedChange, ChangeOp, changelog_headers, dumps
from app.infra.settings import Settings
from app.infra.topics import ensure_topics, partition_for
from tables.flags import FlagTable
from tables.replication import FlagReplication

RECORDS = 2000
ENVIRONMENT = "persist"
FLAG: dict[str, Any] = {
    "state": "ENABLED",
    "variants": {"on": True, "off": False},
    "defaultVariant": "off",
}
# A queued write per loop turn: one catch-up slice (5 ms of applying) written in one RocksDB
# write, a few times the slice's cost; CPU seconds of this thread (a loaded machine's other
# processes do not count).
LONGEST_TURN_S = 0.05


def changes() -> list[AppliedChange]:
    now = time.time()
    return [
        AppliedChange(
            f"c{i}",
            ENVIRONMENT,
            f"f{i % (RECORDS // 2)}",
            ChangeOp.PUT,
            i + 1,
            1 + i // (RECORDS // 2),
            FLAG,
            "me",
            now,
            now,
            0,
            i,
        )
        for i in range(RECORDS)
    ]


async def write(broker: str, topic: str, partition: int) -> None:
    """`applied` as the decider writes them (value and meta header), in one batch."""
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=50)
    await producer.start()
    try:
        sent = [
            await producer.send(
                topic,
                dumps(change.to_json()),
                key=ENVIRONMENT.encode(),
                partition=partition,
                headers=changelog_headers(change),
            )
            for change in applied
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def ready_then_persisted(
    replication: FlagReplication, table: FlagTable, partition: int
) -> tuple[int, int, float]:
    """Start, wait for ready, then turn the loop until nothing is queued: (records queued at
    ready, the offset RocksDB held then, the longest turn's CPU seconds after ready)."""
    await replication.start()
    try:
        await replication.ready.wait()
        queued, persisted = table.pending(), table.persisted_position(partition)
        longest, last = 0.0, time.thread_time()
        while table.pending():
            await asyncio.sleep(0)
            now = time.thread_time()
            longest, last = max(longest, now - last), now
        assert table.persisted_position(partition) == table.position(partition)
        assert table.history(ENVIRONMENT, "f0") == [applied[1000], applied[0]]
        return queued, persisted, longest
    finally:
        await replication.stop()


applied = changes()


def test_ready_comes_before_rocksdb_has_the_records_and_they_follow(
    broker: str, tmp_path: Path
) -> None:
    settings = dataclasses.replace(
        Settings.from_env(), brokers=(broker,), data_dir=tmp_path, fetch_max_wait_ms=10
    )
    asyncio.run(ensure_topics(settings))
    table = FlagTable(tmp_path / "flags", history_depth=3, stream_depth=100, change_id_depth=100)
    replication = FlagReplication(settings, table, Metrics(CollectorRegistry()))
    partition = partition_for(ENVIRONMENT, settings.flag_change_partitions)
    asyncio.run(write(broker, replication.partitions[0].topic, partition))

    queued, persisted, longest = asyncio.run(ready_then_persisted(replication, table, partition))
    assert queued >= RECORDS // 2, "ready before most of the catch-up was written"
    assert persisted < RECORDS
    assert longest < LONGEST_TURN_S, f"a queued write held the loop {longest:.3f}s"

    table.open()  # what the background wrote, read back
    try:
        assert table.position(partition) == RECORDS + 1, "every record and the start fence"
        assert table.changes_after(ENVIRONMENT, RECORDS - 100) == applied[-100:]
        assert table.applied(ENVIRONMENT, f"c{RECORDS - 1}") == applied[-1]
        assert table.decided(0) == RECORDS - 1
    finally:
        table.close()
