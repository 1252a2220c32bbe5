"""Records applied by their meta header, the value stored unparsed: the same table as
records decoded whole, and a header a worker cannot read falls back to decoding."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry
from rocksdict import Options, Rdict

from app.infra.metrics import Metrics
from app.infra.records import CHANGE_HEADER, AppliedChange, ChangeOp, changelog_headers, dumps
from app.infra.settings import Settings
from app.infra.topics import Topics, ensure_topics, partition_for
from tables.changelog_check import fingerprint
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
            for change, headers in zip(applied, HEADERS, strict=True):
                await producer.send_and_wait(
                    Topics.of(settings).flags_changelog,
                    dumps(change.to_json()),
                    key=change.environment.encode(),
                    partition=partition_for(change.environment, settings.flag_change_partitions),
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


def test_a_table_of_the_older_store_format_is_rebuilt_from_the_changelog(
    broker: str, tmp_path: Path
) -> None:
    """A worker upgraded over a format-1 table (no `v/format`, every change decoded three
    times) starts from the changelog's beginning and ends with the table the log makes."""
    settings = dataclasses.replace(
        Settings.from_env(), brokers=(broker,), data_dir=tmp_path, fetch_max_wait_ms=10
    )
    asyncio.run(ensure_topics(settings))
    environment = "meta-upgraded"
    before = asyncio.run(end_offset(broker, environment))
    applied = [dataclasses.replace(c, environment=environment) for c in changes()]
    write(broker, settings, applied)

    path = tmp_path / "flags"
    old = Rdict(str(path), Options(raw_mode=True))
    stale = dumps(applied[0].to_json())
    partition = partition_for(environment, settings.flag_change_partitions)
    last = fingerprint(environment.encode(), dumps(applied[-1].to_json()))  # the log agrees
    old[f"o/{partition:06d}".encode()] = f"{before + len(applied)}:{last}".encode()
    old[f"f/{environment}/f0".encode()] = stale
    old[f"h/{environment}/f0/000000000001".encode()] = stale
    old.close()

    table = FlagTable(path, history_depth=5, stream_depth=10, change_id_depth=10)
    asyncio.run(caught_up(FlagReplication(settings, table, Metrics(CollectorRegistry()))))
    table.open()
    try:
        assert [table.get(environment, f"f{i}") for i in range(3)] == applied[3:]
        assert table.environment_seq(environment) == len(applied)
    finally:
        table.close()


async def end_offset(broker: str, environment: str) -> int:
    """The environment's changelog partition's end offset (records earlier tests wrote)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, group_id=None)
    await consumer.start()
    try:
        settings = Settings.from_env()
        partition = partition_for(environment, settings.flag_change_partitions)
        tp = TopicPartition(Topics.of(settings).flags_changelog, partition)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()
