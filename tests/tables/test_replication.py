"""What a waiting writer learns from the changelog, decided record by record (real RocksDB)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, NamedTuple

from app.control.outcomes import Outcomes
from app.infra.records import AppliedChange, ChangeOp, dumps
from app.infra.settings import Settings
from tables.flags import FlagTable
from tables.replication import FENCE_KEY, FlagReplication

FLAG = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}


class Record(NamedTuple):
    key: bytes | None
    value: bytes | None
    offset: int


def change(change_id: str, seq: int, version: int) -> AppliedChange:
    return AppliedChange(change_id, "dev", "f", ChangeOp.PUT, seq, version, FLAG, "me", 1.0, 1.0)


def record(offset: int, applied: AppliedChange) -> Record:
    return Record(b"dev", dumps(applied.to_json()), offset)


def test_writers_learn_applied_repeated_and_lost_changes(tmp_path: Path) -> None:
    async def run() -> dict[str, Any]:
        table = FlagTable(tmp_path, history_depth=5, stream_depth=5, change_id_depth=5)
        table.open()
        replication = FlagReplication(Settings.from_env(), table, Outcomes())
        waiting = {cid: replication.outcomes.expect(cid) for cid in ("first", "again", "lost")}
        replication._apply(0, [record(0, change("first", 1, 1))])
        first = await waiting.pop("first")
        waiting["again"] = replication.outcomes.expect("first")
        replication._apply(
            0,
            [
                Record(FENCE_KEY, b"", 1),
                record(2, change("first", 1, 1)),  # a redelivered decision
                record(3, change("lost", 1, 1)),  # another decision for the same seq
                Record(b"dev", b"\xff not json", 4),
            ],
        )
        outcomes = {"first": first, **{k: await v for k, v in waiting.items()}}
        assert table.position(0) == 5
        table.close()
        return outcomes

    outcomes = asyncio.run(run())
    assert outcomes["first"] == change("first", 1, 1)
    assert outcomes["again"] == change("first", 1, 1)
    assert outcomes["lost"]["code"] == "VERSION_CONFLICT"
    assert outcomes["lost"]["current_version"] == 1
