"""The replication in process, against the real broker and RocksDB: a catch-up of thousands
of changelog records keeps the event loop turning, and applies each record exactly once."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
import uuid
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from app.infra.metrics import Metrics
from app.infra.records import AppliedChange, ChangeOp, dumps
from app.infra.settings import Settings
from app.infra.topics import Topics, ensure_topics, partition_for
from tables.flags import FlagTable
from tables.replication import FlagReplication
from tests.conftest import produce

RECORDS = 3000
ENVIRONMENT = "catch-up"
# The longest turn of the loop the catch-up may take, in CPU seconds of this thread (other
# processes on a loaded machine do not count): an apply slice (5 ms) or one fetch's parsing
# (~9 ms seen). Before slicing, a fetched batch of 2,000 records was applied in one turn
# (0.33 s seen).
LONGEST_TURN_S = 0.05


def definition(i: int) -> dict[str, Any]:
    rule = {"if": [{"in": [{"var": "tier"}, ["pro", "enterprise"]]}, "on", "off"]}
    variants = {"on": f"{i}-on", "off": f"{i}-off"}
    return {"state": "ENABLED", "variants": variants, "defaultVariant": "off", "targeting": rule}


def write_changelog(broker: str, settings: Settings) -> None:
    """`RECORDS` changes of one environment, as the decider writes them."""
    asyncio.run(ensure_topics(settings))
    now = time.time()
    records = [
        (
            ENVIRONMENT.encode(),
            dumps(
                AppliedChange(
                    str(uuid.uuid4()),
                    ENVIRONMENT,
                    f"flag-{i % (RECORDS // 2):05d}",  # each flag twice: version 1, then 2
                    ChangeOp.PUT,
                    i + 1,
                    1 + i // (RECORDS // 2),
                    definition(i),
                    "seed",
                    now,
                    now,
                    source_partition=0,
                    source_offset=i,
                ).to_json()
            ),
        )
        for i in range(RECORDS)
    ]
    partition = partition_for(ENVIRONMENT, settings.flag_change_partitions)
    produce(broker, Topics.of(settings).flags_changelog, records, partition)


async def catch_up(replication: FlagReplication) -> tuple[float, float, int]:
    """Start the replication and turn the loop until it is ready: (CPU seconds in all, the
    longest turn's CPU seconds, turns)."""
    longest, turns = 0.0, 0
    await replication.start()  # opens the table and the clients; the catch-up runs on
    started = last = time.thread_time()
    try:
        while not replication.ready.is_set():
            await asyncio.sleep(0)
            now = time.thread_time()
            longest, last, turns = max(longest, now - last), now, turns + 1
        return time.thread_time() - started, longest, turns
    finally:
        await replication.stop()


def test_a_catch_up_of_thousands_of_records_keeps_the_loop_turning(
    broker: str, tmp_path: Path
) -> None:
    settings = dataclasses.replace(
        Settings.from_env(), brokers=(broker,), data_dir=tmp_path, fetch_max_wait_ms=10
    )
    write_changelog(broker, settings)
    table = FlagTable(tmp_path / "flags", history_depth=3, stream_depth=100, change_id_depth=100)
    replication = FlagReplication(settings, table, Metrics(CollectorRegistry()))
    heard: list[int] = []
    table.listen(lambda change: heard.append(change.seq))

    gc.disable()  # a collection's pause is not the apply's
    try:
        total, longest, turns = asyncio.run(catch_up(replication))
    finally:
        gc.enable()
        gc.unfreeze()  # the catch-up froze this test process's objects
    assert heard == list(range(1, RECORDS + 1)), "every record applied once, in order"
    assert longest < LONGEST_TURN_S, f"a turn held the loop {longest:.3f}s of {total:.3f}s"
    assert turns > 50

    table.open()  # what the batches wrote, read back from RocksDB
    try:
        assert table.environment_seq(ENVIRONMENT) == RECORDS
        assert table.decided(0) == RECORDS - 1
        last = table.get(ENVIRONMENT, "flag-00000")
        assert last is not None and last.version == 2 and last.seq == RECORDS // 2 + 1
        assert [c.version for c in table.history(ENVIRONMENT, "flag-00000")] == [2, 1]
        assert len(table.live_flags(ENVIRONMENT)) == RECORDS // 2
        seqs = [c.seq for c in table.changes_after(ENVIRONMENT, RECORDS - 100) or []]
        assert seqs == list(range(RECORDS - 99, RECORDS + 1))
        assert table.changes_after(ENVIRONMENT, RECORDS - 101) is None, "stream_depth kept"
    finally:
        table.close()
