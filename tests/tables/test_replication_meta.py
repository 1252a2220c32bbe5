"""Records applied by their meta header, the value stored unparsed: the same table as
records decoded whole, and a header a worker cannot read falls back to decoding."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from app.infra.metrics import Metrics
from app.infra.records import CHANGE_HEADER, AppliedChange, ChangeOp, changelog_headers, dumps
from app.infra.settings import Settings
from app.infra.topics import FLAGS_CHANGELOG, ensure_topics, partition_for
from tables.flags import FlagTable
from tables.replication import FlagReplication

ENVIRONMENT = "meta"
FLAG = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}
HEADERS: list[Any] = [
    "decider",  # the decider's meta header
    None,  # none: a record from before it
    [(CHANGE_HEADER, b"not json")],
    [(CHANGE_HEADER, b'[1, "id", "meta", "f", "put", "2", 1]')],  # wrong types
    [(CHANGE_HEADER, None)],  # a header without a value
    "decider",
]


def changes() -> list[AppliedChange]:
    now = time.time()
    found = []
    for i, _ in enumerate(HEADERS):
        definition = None if i == 4 else {**FLAG, "defaultVariant": "on" if i % 2 else "off"}
        op = ChangeOp.DELETE if definition is None else ChangeOp.PUT
        found.append(
            AppliedChange(
                f"c{i}", ENVIRONMENT, f"f{i % 3}", op, i + 1, 1 + i // 3, definition, "me", now, now
            )
        )
    return found


def write(broker: str, settings: Settings, applied: list[AppliedChange]) -> None:
    async def run() -> None:
        await ensure_topics(settings)
        producer = AIOKafkaProducer(bootstrap_servers=broker)
        await producer.start()
        try:
            partition = partition_for(ENVIRONMENT, settings.flag_change_partitions)
            for change, headers in zip(applied, HEADERS, strict=True):
                await producer.send_and_wait(
                    FLAGS_CHANGELOG,
                    dumps(change.to_json()),
                    key=ENVIRONMENT.encode(),
                    partition=partition,
                    headers=changelog_headers(change) if headers == "decider" else headers,
                )
        finally:
            await producer.stop()

    asyncio.run(run())


async def caught_up(replication: FlagReplication) -> None:
    await replication.start()
    try:
        await replication.ready.wait()
    finally:
        await replication.stop()


def test_records_with_and_without_a_readable_meta_make_the_same_table(
    broker: str, tmp_path: Path
) -> None:
    settings = dataclasses.replace(
        Settings.from_env(), brokers=(broker,), data_dir=tmp_path, fetch_max_wait_ms=10
    )
    applied = changes()
    write(broker, settings, applied)
    table = FlagTable(tmp_path / "flags", history_depth=5, stream_depth=10, change_id_depth=10)
    heard: list[AppliedChange] = []
    table.listen(heard.append)
    asyncio.run(caught_up(FlagReplication(settings, table, Metrics(CollectorRegistry()))))
    assert heard == applied, "each record applied once, in order, as the decider decided it"

    table.open()  # read back from RocksDB
    try:
        assert table.changes_after(ENVIRONMENT, 0) == applied
        assert [table.get(ENVIRONMENT, f"f{i}") for i in range(3)] == applied[3:]
        assert table.history(ENVIRONMENT, "f1") == [applied[4], applied[1]]
        assert all(table.applied(ENVIRONMENT, c.change_id) == c for c in applied)
    finally:
        table.close()
