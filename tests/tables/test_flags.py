"""The flag table on real RocksDB: what it keeps, what it trims, what survives a reopen."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import pytest
from rocksdict import Options, Rdict

from app.infra.records import (
    CHANGE_HEADER,
    AppliedChange,
    ChangeOp,
    change_meta,
    change_meta_json,
    dumps,
    routed_change,
)
from tables.flags import CLOCK_EVERY, RANGE_TRIM_MIN, STORE_FORMAT, FlagTable
from tables.rocks import under

FLAG = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}


def change(
    seq: int,
    flag: str = "f",
    version: int | None = None,
    definition: dict[str, object] | None = FLAG,
) -> AppliedChange:
    return AppliedChange(
        f"c{seq}", "dev", flag, ChangeOp.PUT, seq, version or seq, definition, "me", float(seq), 0.0
    )


def open_table(path: Path) -> FlagTable:
    table = FlagTable(path, history_depth=3, stream_depth=4, change_id_depth=4)
    table.open()
    return table


def test_apply_keeps_versions_history_and_the_change_log(tmp_path: Path) -> None:
    table = open_table(tmp_path)
    seen: list[int] = []
    table.listen(lambda c: seen.append(c.seq))
    for seq in range(1, 7):
        assert table.apply(0, seq - 1, change(seq))
    assert table.get("dev", "f") == change(6)
    assert [c.version for c in table.history("dev", "f")] == [6, 5, 4]
    assert table.environment_seq("dev") == 6
    assert [c.seq for c in table.changes_after("dev", 3) or []] == [4, 5, 6]
    assert table.changes_after("dev", 1) is None, "seq 2 is no longer kept: a snapshot is due"
    assert table.changes_after("dev", 6) == []
    assert table.changes_after("dev", 7) is None, "a seq from another cluster gets a snapshot"
    assert table.applied("dev", "c6") == change(6) and table.applied("dev", "c1") is None
    assert seen == [1, 2, 3, 4, 5, 6]
    assert table.position(0) == 6


def test_a_repeated_record_moves_the_offset_but_changes_nothing(tmp_path: Path) -> None:
    table = open_table(tmp_path)
    table.apply(0, 0, change(1))
    assert not table.apply(0, 1, change(1))
    table.apply(0, 2, None)  # a fence
    assert table.position(0) == 3 and table.environment_seq("dev") == 1
    assert len(table.history("dev", "f")) == 1


def test_a_reopened_table_holds_what_it_held(tmp_path: Path) -> None:
    table = open_table(tmp_path)
    for seq in range(1, 6):
        table.apply(seq % 2, seq, change(seq, flag=f"f{seq % 2}", version=(seq + 1) // 2))
    table.apply(1, 9, change(6, flag="f1", version=4, definition=None))
    table.close()

    again = open_table(tmp_path)
    assert again.position(0) == 5 and again.position(1) == 10
    assert again.environment_seq("dev") == 6
    assert set(again.live_flags("dev")) == {"f0"}
    assert again.get("dev", "f1") is not None and again.get("dev", "f1").deleted  # type: ignore[union-attr]
    assert [c.seq for c in again.changes_after("dev", 2) or []] == [3, 4, 5, 6]
    again.close()


def decided_change(seq: int, source_offset: int, source_partition: int = 0) -> AppliedChange:
    return replace(change(seq), source_partition=source_partition, source_offset=source_offset)


def test_the_highest_decided_command_offset_is_kept_per_partition_and_survives_a_reopen(
    tmp_path: Path,
) -> None:
    table = open_table(tmp_path)
    assert table.decided(0) == -1
    table.apply(0, 0, decided_change(1, source_offset=7))
    table.apply(0, 1, decided_change(2, source_offset=9, source_partition=1))
    # A stale decider's record takes no seq, yet its command was decided: it counts.
    assert not table.apply(0, 2, decided_change(2, source_offset=12))
    table.apply(0, 3, change(3))  # a foreign writer's record names no command
    assert (table.decided(0), table.decided(1)) == (12, 9)
    table.close()
    again = open_table(tmp_path)
    assert (again.decided(0), again.decided(1), again.decided(2)) == (12, 9, -1)
    again.close()


def test_change_ids_are_remembered_for_the_last_change_id_depth_changes(tmp_path: Path) -> None:
    table = open_table(tmp_path)  # keeps 3 versions of history, 4 change ids
    for seq in range(1, 8):
        table.apply(0, seq - 1, change(seq))
    assert [seq for seq in range(1, 8) if table.applied("dev", f"c{seq}")] == [4, 5, 6, 7]
    assert table.applied("dev", "c7") == change(7), "with its definition, from the history"
    beyond_history = table.applied("dev", "c4")
    assert beyond_history == replace(change(4), definition=None)
    table.close()
    again = open_table(tmp_path)
    assert again.applied("dev", "c5") == replace(change(5), definition=FLAG)
    assert again.applied("dev", "c3") is None
    again.close()


def stored(table: FlagTable) -> dict[bytes, bytes]:
    """Every key and value of the table's RocksDB (a test reads the store format)."""
    return {key: value for key, value in under(table._open_db(), b"")}


def test_each_change_is_stored_once_as_read_and_read_back_unparsed(tmp_path: Path) -> None:
    table = open_table(tmp_path)
    batch = table.batch(0)
    records = []
    for seq in range(1, 4):
        applied = change(seq, flag=f"f{seq % 2}", version=(seq + 1) // 2)
        raw, meta = dumps(applied.to_json()), change_meta(applied)
        records.append(raw)
        assert batch.add(seq - 1, routed_change(meta, raw), raw, meta)
    batch.commit()

    values = stored(table)
    assert values[b"v/format"] == STORE_FORMAT
    assert values[b"h/dev/f1/000000000002"].endswith(b"\0" + records[2]), "the record as read"
    assert sum(records[2] in value for value in values.values()) == 1, "stored once"
    assert values[b"f/dev/f1"] == b"2" and values[b"s/dev/000000000003"] == b"f1/2"
    table.close()

    again = open_table(tmp_path)
    assert again.get("dev", "f1") == change(3, flag="f1", version=2)
    assert [c.seq for c in again.changes_after("dev", 0) or []] == [1, 2, 3]
    assert again.applied("dev", "c2") == change(2, flag="f0", version=1)
    assert again.history("dev", "f1") == [change(3, "f1", 2), change(1, "f1", 1)]
    again.close()


def test_a_table_of_the_older_store_format_is_emptied_to_be_rebuilt(tmp_path: Path) -> None:
    """Format 1 held three decoded copies of each change and no `v/format`: opened for
    writing, it is emptied (position 0: the replication reads the changelog from its start);
    opened read-only (`flagstream restore`), it is read as it is."""
    old = Rdict(str(tmp_path), Options(raw_mode=True))
    full = dumps(change(1).to_json())
    old[b"o/000000"] = b"1:abc"
    old[b"f/dev/f"] = full
    old[b"h/dev/f/000000000001"] = full
    old[b"s/dev/000000000001"] = full
    old.close()

    kept = FlagTable(tmp_path, history_depth=3, stream_depth=4, change_id_depth=4)
    kept.open(read_only=True)
    assert kept.get("dev", "f") == change(1) and kept.history("dev", "f") == [change(1)]
    assert kept.environment_seq("dev") == 1 and kept.position(0) == 1
    kept.close()

    table = open_table(tmp_path)
    assert table.position(0) == 0 and table.environments() == []
    assert stored(table) == {b"v/format": STORE_FORMAT}
    table.apply(0, 0, change(1))
    table.close()
    again = open_table(tmp_path)
    assert again.get("dev", "f") == change(1) and again.position(0) == 1, "not emptied again"
    again.close()


def test_a_stream_entry_whose_version_the_history_dropped_starts_the_log_after_it(
    tmp_path: Path,
) -> None:
    """History 3 versions, stream 4 changes: one flag changed 4 times keeps 3 versions; the
    running table serves all 4 changes, a reopened one the 3 it can read back."""
    table = open_table(tmp_path)
    for seq in range(1, 5):
        table.apply(0, seq - 1, change(seq))
    assert [c.seq for c in table.changes_after("dev", 0) or []] == [1, 2, 3, 4]
    table.close()
    again = open_table(tmp_path)
    assert again.changes_after("dev", 0) is None, "seq 1's version is gone: a snapshot"
    assert [c.seq for c in again.changes_after("dev", 1) or []] == [2, 3, 4]
    again.close()


def test_batch_listeners_hear_each_write_once_in_order_before_the_change_listeners(
    tmp_path: Path,
) -> None:
    table = open_table(tmp_path)
    heard: list[tuple[str, list[int]]] = []
    table.listen_batches(lambda changes: heard.append(("batch", [c.seq for c in changes])))
    table.listen(lambda c: heard.append(("change", [c.seq])))
    batch = table.batch(0)
    for seq in range(1, 4):
        assert batch.add(seq - 1, change(seq, flag=f"f{seq}"))
    assert not batch.add(3, change(2, flag="f2")), "already in: not told again"
    batch.commit()
    table.apply(0, 4, None)  # a fence: no change, nobody told

    assert heard == [("batch", [1, 2, 3]), ("change", [1]), ("change", [2]), ("change", [3])]


@pytest.mark.parametrize("changes", [10, 3 + RANGE_TRIM_MIN + 4, 200])
def test_one_write_of_many_changes_keeps_the_last_stream_depth_of_them(
    tmp_path: Path, changes: int
) -> None:
    """Trimmed one by one (a few) or by a range deletion (a catch-up's many)."""
    table = open_table(tmp_path)  # stream_depth 4
    table.apply(0, 0, change(1, flag="first"))
    batch = table.batch(0)
    for seq in range(2, changes + 1):
        batch.add(seq - 1, change(seq, flag=f"f{seq}", version=1))
    batch.commit()
    table.apply(0, changes, change(changes + 1, flag="last"))
    kept = list(range(changes - 2, changes + 2))
    assert [c.seq for c in table.changes_after("dev", kept[0] - 1) or []] == kept
    assert [key for key in stored(table) if key.startswith(b"s/")] == [
        b"s/dev/%012d" % seq for seq in kept
    ]
    table.close()
    again = open_table(tmp_path)
    assert [c.seq for c in again.changes_after("dev", kept[0] - 1) or []] == kept
    assert again.changes_after("dev", kept[0] - 2) is None


def deferred(table: FlagTable, first_offset: int, changes: list[AppliedChange]) -> None:
    """Apply `changes` as a catch-up does before ready: committed, their write queued."""
    batch = table.batch(0)
    for offset, applied in enumerate(changes, first_offset):
        batch.add(offset, applied, dumps(applied.to_json()), change_meta(applied))
    batch.commit(defer=True)


def test_a_catch_up_serves_from_memory_and_writes_rocksdb_after(tmp_path: Path) -> None:
    """Ready needs the mirror only: a deferred commit serves at once, writes nothing (not
    even the offset) until `persist_slice`, and reads of the disk (history, change ids) see
    the queued changes too."""
    table = open_table(tmp_path)
    table.apply(0, 0, change(1))
    written = stored(table)
    deferred(table, 1, [change(2), change(3, flag="g", version=1)])
    deferred(table, 3, [change(4)])

    assert table.get("dev", "f") == change(4) and table.get("dev", "g") is not None
    assert table.position(0) == 4 and table.environment_seq("dev") == 4
    assert [c.seq for c in table.changes_after("dev", 1) or []] == [2, 3, 4]
    assert stored(table) == written, "nothing written yet"
    assert table.pending() == 3 and table.persisted_position(0) == 1
    assert table.persist_slice(), "one queued write left"
    assert table.persisted_position(0) == 3 and table.pending() == 1
    assert [c.version for c in table.history("dev", "f")] == [4, 2], "the queue read too"
    assert table.applied("dev", "c3") == change(3, flag="g", version=1)
    assert table.pending() == 1, "reads do not write the queue"
    table.flush()
    assert table.pending() == 0 and table.persisted_position(0) == 4
    table.apply(0, 4, change(5))  # after the queue drained: written at once
    assert table.persisted_position(0) == 5


def test_a_tail_write_waits_behind_the_queued_catch_up(tmp_path: Path) -> None:
    """Writes go in changelog order: a write committed while the catch-up's are queued
    queues too (its offset must not land before theirs), and close writes them all."""
    table = open_table(tmp_path)
    deferred(table, 0, [change(1), change(2)])
    table.apply(0, 2, change(3))
    assert table.pending() == 3 and table.persisted_position(0) == 0
    table.close()
    again = open_table(tmp_path)
    assert again.position(0) == 3 and again.get("dev", "f") == change(3)
    assert [c.seq for c in again.changes_after("dev", 0) or []] == [1, 2, 3]
    assert again.applied("dev", "c1") == change(1) and again.applied("dev", "c2") == change(2)


def test_a_crash_before_the_queued_writes_reads_them_again_to_the_same_table(
    tmp_path: Path,
) -> None:
    """A worker killed before its catch-up was written restarts from the last offset
    written: applying the same records again makes the same table."""
    records = [change(seq, flag=f"f{seq % 3}", version=(seq + 2) // 3) for seq in range(1, 10)]
    whole = open_table(tmp_path / "whole")
    for offset, applied in enumerate(records):
        whole.apply(0, offset, applied)
    whole.close()

    table = open_table(tmp_path / "crashed")
    for offset, applied in enumerate(records[:4]):
        table.apply(0, offset, applied)
    deferred(table, 4, records[4:])
    table._drop_pending()  # what a SIGKILL loses
    table.close()
    again = open_table(tmp_path / "crashed")
    assert again.position(0) == 4, "from the last offset written"
    deferred(again, 4, records[4:])
    again.close()
    assert stored(open_table(tmp_path / "crashed")) == stored(open_table(tmp_path / "whole"))


def reads(table: FlagTable, flags: list[str], changes: list[AppliedChange]) -> list[object]:
    """What a request can read of the disk: each flag's history, each change id's change,
    each version of each flag (the `at=` of time travel reads the history)."""
    return [
        [table.history("dev", flag) for flag in flags],
        [table.applied("dev", applied.change_id) for applied in changes],
        [table._version("dev", c.flag, c.version) for c in changes],
    ]


@pytest.mark.parametrize("queued_from", [0, 5, 17, 29])
def test_reads_look_in_the_queued_writes_as_rocksdb_will_hold_them(
    tmp_path: Path, queued_from: int
) -> None:
    """History, a version and change ids read with writes queued (after ready, before the
    queue is written) are what they read once it is written: the queue's versions and change
    ids in, what its writes will trim (versions with gaps: a deleted flag re-created) out."""
    flags = ["a", "b", "c"]
    versions = dict.fromkeys(flags, 0)
    changes = []
    for seq in range(1, 31):
        flag = flags[seq * seq % 3]
        versions[flag] += 2 if seq % 7 == 0 else 1  # a gap now and then
        changes.append(change(seq, flag=flag, version=versions[flag]))
    queued = open_table(tmp_path / "queued")
    for offset, applied in enumerate(changes[:queued_from]):
        queued.apply(0, offset, applied)
    for first in range(queued_from, len(changes), 4):  # one queued write per 4 records
        deferred(queued, first, changes[first : first + 4])
    written = open_table(tmp_path / "written")
    for offset, applied in enumerate(changes):
        written.apply(0, offset, applied)

    pending = queued.pending()
    assert pending == len(changes) - queued_from
    assert reads(queued, flags, changes) == reads(written, flags, changes)
    assert queued.pending() == pending, "read without writing the queue"
    queued.flush()
    assert reads(queued, flags, changes) == reads(written, flags, changes)


def test_a_read_right_after_ready_does_not_write_a_large_queue_first(tmp_path: Path) -> None:
    """After ready the catch-up's writes are queued (tens of thousands of records): a
    change-id check or a history read then waited for all of them to be written, ~0.6 s of
    the event loop for 30,000. It reads the queue instead: bounded CPU, nothing written."""
    table = FlagTable(tmp_path, history_depth=50, stream_depth=1000, change_id_depth=100_000)
    table.open()
    changes = [
        change(seq, flag=f"f{seq % 500}", version=seq // 500 + 1) for seq in range(1, 20_001)
    ]
    for first in range(0, len(changes), 200):  # catch-up slices
        deferred(table, first, changes[first : first + 200])
    assert table.pending() == 20_000

    started = time.thread_time()
    assert table.applied("dev", "c10") == changes[9]
    assert table.applied("dev", "unknown") is None
    assert [c.version for c in table.history("dev", "f7")] == list(range(40, 0, -1))
    cpu = time.thread_time() - started
    assert table.pending() == 20_000, "nothing written by the reads"
    assert cpu < 0.02, f"{cpu * 1000:.0f} ms of CPU for three reads (0.2 ms on a quiet machine)"
    table.close()


def test_history_entries_with_an_older_json_meta_still_read(tmp_path: Path) -> None:
    """A table written before the binary meta holds JSON metas (no NUL in them): read as
    before, beside binary ones (which hold NULs: their length is in them)."""
    table = open_table(tmp_path)
    batch = table.batch(0)
    old, new = change(1), change(2)
    batch.add(0, old, dumps(old.to_json()), change_meta_json(old))
    batch.add(1, new, dumps(new.to_json()), change_meta(new))
    batch.commit()
    table.close()
    again = open_table(tmp_path)
    assert again.history("dev", "f") == [new, old]
    assert again.applied("dev", "c1") == old and again.applied("dev", "c2") == new
    again.close()


class Fetched(NamedTuple):
    """A fetched changelog record, as much of it as `add_records` reads."""

    offset: int
    value: bytes | None
    change: AppliedChange | None
    headers: list[tuple[str, bytes]]


@pytest.mark.parametrize("by_header", [False, True])
def test_adding_fetched_records_in_one_loop_decides_as_adding_them_one_by_one(
    tmp_path: Path, by_header: bool
) -> None:
    """`add_records` (a catch-up's loop) makes the table `add` record by record makes: fresh
    and stale changes, fences, decided offsets, the queue's index; `heard` gives each change
    in order with whether it was fresh, the stale ones are counted, the newest produce time
    kept, and it stops at the first look at the clock past its deadline (every
    `CLOCK_EVERY` records). `by_header`: the loop reads the binary metas itself (a record
    without one, a fence, by `read`) and leaves the changes undecoded, to the same table."""
    changes = [
        replace(
            change(seq, flag=f"f{seq % 3}"),
            source_partition=0,
            source_offset=seq,
            produced_at=float(seq % 7),
        )
        for seq in range(1, 20)
    ]
    fetched = [
        Fetched(n, dumps(c.to_json()), c, [(CHANGE_HEADER, change_meta(c))])
        for n, c in enumerate(changes)
    ]
    fetched.insert(5, Fetched(5, None, None, []))  # a fence
    stale = replace(changes[3], source_offset=40)
    fetched.insert(9, Fetched(9, dumps(stale.to_json()), stale, []))  # stale, read by `read`
    fetched = [f._replace(offset=n) for n, f in enumerate(fetched)]

    def read(record: Fetched) -> tuple[AppliedChange | None, bytes | None]:
        return record.change, None if record.change is None else change_meta(record.change)

    by_one = open_table(tmp_path / "one")
    batch = by_one.batch(0)
    for record in fetched:
        applied, meta = read(record)
        batch.add(record.offset, applied, record.value, meta)
    batch.commit("fp", defer=True)

    in_loop = open_table(tmp_path / "loop")
    batch = in_loop.batch(0)
    first = batch.add_records(fetched, 0, read, deadline=0.0, by_header=by_header)
    assert first == CLOCK_EVERY, "the first look at the clock stops it"
    last = batch.add_records(fetched, first, read, time.perf_counter() + 60, by_header=by_header)
    assert last == len(fetched)
    assert batch.stale == 1 and batch.newest_produced == 6.0
    fresh = batch.commit("fp", defer=True)
    undecoded = [c for c in fresh if type(c).__name__ == "_UndecodedChange"]
    assert len(undecoded) == (len(fresh) if by_header else 0), "nothing read them"
    heard = [(c, was_fresh) for run, was_fresh in batch.heard() for c in run]
    assert heard == [(r.change, r.offset != 9) for r in fetched if r.change is not None]

    for table in (by_one, in_loop):
        assert table.position(0) == len(fetched) and table.decided(0) == 40
        assert table.environment_seq("dev") == 19 and table.pending() == len(fetched)
    assert reads(in_loop, ["f0", "f1", "f2"], changes) == reads(by_one, ["f0", "f1", "f2"], changes)
    in_loop.flush()
    by_one.flush()
    assert stored(in_loop) == stored(by_one)
