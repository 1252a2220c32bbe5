"""An apply slice in process (records as a fetch returns them, no broker): what it counts,
tells and stops at."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import NamedTuple

from prometheus_client import CollectorRegistry

from app.control.outcomes import Outcomes
from app.engine import JsonObject
from app.evaluation.live_flags import LiveFlags
from app.infra.metrics import Metrics
from app.infra.records import AppliedChange, ChangeOp, changelog_headers, dumps, loads
from app.infra.settings import Settings
from app.web.change_feed import ChangeFeed
from tables.changelog_check import fingerprint
from tables.flags import FlagTable
from tables.replication import CLOCK_EVERY, FlagReplication
from tests.tables.test_flags import stored

FLAG: JsonObject = {
    "state": "ENABLED",
    "variants": {"on": True, "off": False},
    "defaultVariant": "off",
}


class Record(NamedTuple):
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    offset: int


def record(offset: int, seq: int, produced_at: float, environment: str = "dev") -> Record:
    change = AppliedChange(
        f"c{seq}", environment, f"f{seq % 3}", ChangeOp.PUT, seq, seq, FLAG, "me",
        produced_at, produced_at, 0, offset,
    )  # fmt: skip
    value = dumps(change.to_json())
    return Record(environment.encode(), value, changelog_headers(change), offset)


def replica(tmp_path: Path) -> tuple[FlagReplication, Metrics]:
    table = FlagTable(tmp_path, history_depth=3, stream_depth=10, change_id_depth=10)
    table.open()
    metrics = Metrics(CollectorRegistry())
    return FlagReplication(Settings.from_env(), table, metrics), metrics


def count(metrics: Metrics, outcome: str) -> float:
    return float(metrics.changelog_records.labels(outcome)._value.get())


def test_a_slice_counts_tells_every_change_in_order_and_the_newest_produce_time(
    tmp_path: Path,
) -> None:
    """Applied and skipped counted per slice, each change told to `on_applied` in changelog
    order with whether it was fresh, and the newest produce time of the fresh ones kept (not
    the last one's: produce times need not rise with the log)."""
    replication, metrics = replica(tmp_path)
    heard: list[tuple[int, bool]] = []
    replication.on_applied(lambda changes, fresh: heard.extend((c.seq, fresh) for c in changes))
    records = [record(0, 1, 50.0), record(1, 2, 70.0), record(2, 3, 60.0), record(3, 2, 90.0)]
    assert replication.apply_slice(0, records, 0, budget_s=60.0) == len(records)
    assert heard == [(1, True), (2, True), (3, True), (2, False)]
    assert (count(metrics, "applied"), count(metrics, "skipped")) == (3.0, 1.0)
    assert metrics.newest_change_produced_at == 70.0, "the stale record's time is not news"
    assert replication.table.position(0) == len(records)


def test_a_slice_past_its_budget_stops_within_a_few_records(tmp_path: Path) -> None:
    """The clock is read every `CLOCK_EVERY` records: a slice whose budget is spent stops
    at the next look, and the next slice goes on from there (nothing skipped or repeated)."""
    replication, _ = replica(tmp_path)
    records = [record(n, n + 1, 1.0) for n in range(5 * CLOCK_EVERY)]
    first = replication.apply_slice(0, records, 0, budget_s=0.0)
    assert first == CLOCK_EVERY
    second = replication.apply_slice(0, records, first, budget_s=0.0)
    assert second == 2 * CLOCK_EVERY
    assert replication.apply_slice(0, records, second, budget_s=60.0) == len(records)
    assert replication.table.environment_seq("dev") == len(records)
    assert not math.isnan(replication.metrics.newest_change_produced_at)


def listened(tmp_path: Path) -> tuple[FlagReplication, Metrics]:
    """A replica with the worker's listeners of the table (app/main.py): compiled flags, the
    change feed, the experiments' batch listener's shape, writers waiting for outcomes."""
    replication, metrics = replica(tmp_path)
    LiveFlags(replication.table, compile_after=replication.ready)
    replication.table.listen_batches(ChangeFeed(metrics).publish_all)
    replication.on_applied(Outcomes(replication.table).heard_applied)
    return replication, metrics


def undecoded_changes(table: FlagTable) -> int:
    """How many of the table's current changes no one has read a field of yet."""
    latest = [c for flags in table._latest.values() for c in flags.values()]
    return sum(type(c).__name__ == "_UndecodedChange" for c in latest)


def test_a_catch_up_reads_no_change_before_ready_and_serves_them_equal_after(
    tmp_path: Path,
) -> None:
    """Before ready nothing reads a change a catch-up applied (the worker's listeners are
    attached): each stays undecoded, at the cost of its meta's unpack; after ready each
    reads as the change written, its history and change id too."""
    asyncio.run(catch_up_then_read(tmp_path))


async def catch_up_then_read(tmp_path: Path) -> None:
    replication, metrics = listened(tmp_path)
    records = [record(n, n + 1, float(n), environment=f"e{n % 2}") for n in range(40)]
    await replication._apply(0, records)
    table = replication.table
    assert undecoded_changes(table) == 6, "two environments, three flags each"
    assert metrics.newest_change_produced_at == 39.0
    replication.ready.set()
    written = [written_change(r) for r in records]
    for applied in written[-6:]:
        assert table.get(applied.environment, applied.flag) == applied
        assert table.applied(applied.environment, applied.change_id) == applied
    f1 = [c for c in written if (c.environment, c.flag) == ("e1", "f1")]
    assert table.history("e1", "f1")[0] == f1[-1], "the queued writes' newest version"


def written_change(fetched: Record) -> AppliedChange:
    return AppliedChange.from_json(loads(fetched.value))


def test_changes_never_read_are_written_to_rocksdb_as_read_and_read_back_equal(
    tmp_path: Path,
) -> None:
    """A catch-up's changes, none of them read, are written after ready as the changes
    applied one by one (decoded) are: byte for byte, and read back equal after a reopen."""
    replication, _ = listened(tmp_path / "lazy")
    records = [record(n, n + 1, float(n), environment=f"e{n % 2}") for n in range(40)]
    assert replication.apply_slice(0, records, 0, budget_s=60.0) == len(records)
    lazy = replication.table
    assert undecoded_changes(lazy) == 6 and lazy.pending() == len(records)
    eager = FlagTable(tmp_path / "eager", history_depth=3, stream_depth=10, change_id_depth=10)
    eager.open()
    batch = eager.batch(0)
    for fetched in records:
        (_, meta), *_ = fetched.headers
        batch.add(fetched.offset, written_change(fetched), fetched.value, meta)
    batch.commit(fingerprint(records[-1].key, records[-1].value))
    lazy.flush()
    assert stored(lazy) == stored(eager)
    lazy.close()
    lazy.open()
    for change in map(written_change, records[-6:]):
        assert lazy.get(change.environment, change.flag) == change
        assert lazy.history(change.environment, change.flag)[0] == change
        assert lazy.applied(change.environment, change.change_id) == change
    eager.close()
    lazy.close()


def test_a_record_whose_meta_a_catch_up_cannot_read_is_applied_from_its_value(
    tmp_path: Path,
) -> None:
    """A meta header the replica cannot read (here a change id that is not UTF-8: a foreign
    writer) does not stop the catch-up nor apply a garbled change: the record's value is
    decoded instead, as before the meta existed."""
    replication, _ = listened(tmp_path)
    good = record(0, 1, 1.0)
    (name, meta), *_ = good.headers
    at = meta.index(b"c1")
    bad = good._replace(headers=[(name, meta[:at] + b"\xff\xfe" + meta[at + 2 :])])
    assert replication.apply_slice(0, [bad, record(1, 2, 2.0)], 0, budget_s=60.0) == 2
    assert replication.table.get("dev", "f1") == written_change(good)
    assert replication.table.applied("dev", "c1") == written_change(good)
