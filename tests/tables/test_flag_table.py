"""The flag table on real RocksDB: what it keeps, what it trims, what survives a reopen."""

from __future__ import annotations

from pathlib import Path

from app.records import AppliedChange, ChangeOp
from tables.flags import FlagTable

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
    table = FlagTable(path, history_depth=3, stream_depth=4)
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
    table.apply(1, 9, change(6, flag="f1", version=3, definition=None))
    table.close()

    again = open_table(tmp_path)
    assert again.position(0) == 5 and again.position(1) == 10
    assert again.environment_seq("dev") == 6
    assert set(again.live_flags("dev")) == {"f0"}
    assert again.get("dev", "f1") is not None and again.get("dev", "f1").deleted  # type: ignore[union-attr]
    assert [c.seq for c in again.changes_after("dev", 2) or []] == [3, 4, 5, 6]
    again.close()
