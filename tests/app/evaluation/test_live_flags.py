"""Compiled flags follow the table; past versions come from its history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.evaluation.live_flags import BEYOND_HISTORY, LiveFlag, LiveFlags
from app.infra.records import AppliedChange, ChangeOp
from tables.flags import FlagTable

FLAG = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}


def put(
    table: FlagTable, seq: int, definition: dict[str, Any] | None, at: float, key: str = "f"
) -> None:
    op = ChangeOp.PUT if definition is not None else ChangeOp.DELETE
    table.apply(
        0, seq, AppliedChange(f"c{seq}", "dev", key, op, seq, seq, definition, "me", at, at)
    )


def test_compiled_once_per_version_and_current_with_the_table(tmp_path: Path) -> None:
    table = FlagTable(tmp_path, history_depth=10, stream_depth=10, change_id_depth=10)
    table.open()
    live = LiveFlags(table)
    put(table, 1, FLAG, 10.0)
    first = live.get("dev", "f")
    assert first is not None and first.version == 1 and not first.experiment
    assert live.get("dev", "f") is first, "no recompilation without a change"
    put(table, 2, {**FLAG, "metadata": {"experiment": True}}, 20.0)
    second = live.get("dev", "f")
    assert second is not None and second.version == 2 and second.experiment == "f"
    put(table, 3, None, 30.0)
    assert live.get("dev", "f") is None
    assert live.etag("dev") == '"3"'


def test_time_travel_reads_the_history_and_knows_its_limits(tmp_path: Path) -> None:
    table = FlagTable(tmp_path, history_depth=3, stream_depth=10, change_id_depth=10)
    table.open()
    live = LiveFlags(table)
    for seq in range(1, 6):
        put(table, seq, {**FLAG, "defaultVariant": "on" if seq % 2 else "off"}, seq * 10.0)
    at_45 = live.at("dev", "f", 45.0)
    assert isinstance(at_45, LiveFlag) and at_45.version == 4
    assert live.at("dev", "f", 45.0) is at_45, "past versions are compiled once"
    assert live.at("dev", "f", 25.0) is BEYOND_HISTORY, "version 2 is no longer kept"
    assert live.at("dev", "other", 45.0) is None
    put(table, 6, None, 60.0)
    assert live.at("dev", "f", 65.0) is None


def test_made_up_environments_cost_nothing(tmp_path: Path) -> None:
    table = FlagTable(tmp_path, history_depth=3, stream_depth=10, change_id_depth=10)
    table.open()
    live = LiveFlags(table)
    assert live.environment("made-up") == {}
    assert live.get("made-up", "f") is None
    assert "made-up" not in live._environments
    put(table, 1, FLAG, 1.0)
    assert live.get("dev", "f") is not None
