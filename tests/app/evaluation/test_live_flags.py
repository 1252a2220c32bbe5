"""Compiled flags follow the table, compiled off the request path; past versions come from
its history."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from app.evaluation import live_flags
from app.evaluation.live_flags import BEYOND_HISTORY, LiveFlag, LiveFlags
from app.infra.records import AppliedChange, ChangeOp, change_meta, routed_change
from tables.flags import FlagTable

FLAG = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}


@pytest.fixture(autouse=True)
def collected_again() -> Iterator[None]:
    """The background compiler freezes what it compiles (and all else): thaw it after."""
    yield
    gc.unfreeze()


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
    assert "made-up" not in live._compiled
    put(table, 1, FLAG, 1.0)
    assert live.get("dev", "f") is not None


# -- compiled off the request path (issue 11, item 3) ---------------------------------------

MANY = 3000


class CompileCount:
    """Counts the real compiles (`build` is wrapped, not replaced): who compiled, and when."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = live_flags.build

        def counted(change: AppliedChange) -> LiveFlag:
            self.calls += 1
            return real(change)

        monkeypatch.setattr(live_flags, "build", counted)


def table_of(tmp_path: Path) -> FlagTable:
    table = FlagTable(tmp_path, history_depth=3, stream_depth=10, change_id_depth=10)
    table.open()
    return table


def put_many(table: FlagTable, count: int, environment: str = "dev", first_seq: int = 1) -> None:
    """`count` flags, as the replication applies a fetched batch (in one turn of the loop)."""
    for i in range(count):
        seq = first_seq + i
        definition = {**FLAG, "defaultVariant": "on" if i % 2 else "off"}
        change = AppliedChange(
            f"c{seq}", environment, f"f-{i}", ChangeOp.PUT, seq, 1, definition, "me", 1.0, 1.0
        )
        table.apply(0, seq, change)


async def until(predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Turn the loop until `predicate` holds (AssertionError after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.001)


def test_a_request_compiles_its_one_flag_and_the_loop_turns_while_thousands_compile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loop lag in CPU time (thread_time: other processes on a loaded machine do not count):
    no turn of the loop may hold a fifth of the whole compile (the old design compiled the
    environment on its first evaluation, in one turn)."""
    table = table_of(tmp_path)
    live = LiveFlags(table)
    compiles = CompileCount(monkeypatch)

    async def run() -> tuple[float, float, int]:
        put_many(table, MANY)
        started = time.thread_time()
        longest = 0.0
        turns = 0

        async def tick() -> None:
            nonlocal longest, turns
            last = time.thread_time()
            while compiles.calls < MANY:
                await asyncio.sleep(0)
                now = time.thread_time()
                longest, last, turns = max(longest, now - last), now, turns + 1

        ticker = asyncio.ensure_future(tick())
        await asyncio.sleep(0)
        before = compiles.calls
        first = live.get("dev", "f-1")  # a request, after the apply
        assert first is not None and first.version == 1
        assert compiles.calls - before <= 1, "a request compiles at most the flag it asks for"
        await until(lambda: compiles.calls >= MANY)
        await ticker
        return time.thread_time() - started, longest, turns

    gc.disable()  # a collection's pause is not the compiler's slice
    try:
        total, longest, turns = asyncio.run(run())
    finally:
        gc.enable()
    assert compiles.calls == MANY, "each flag compiled once"
    assert longest < total / 5, f"a turn held the loop {longest:.3f}s of {total:.3f}s"
    assert turns > 10
    assert all(live.get("dev", f"f-{i}") is not None for i in range(MANY))
    assert compiles.calls == MANY, "nothing compiled twice"


def test_a_changed_flag_is_compiled_at_apply_not_by_the_next_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In an environment no request has read yet, too: the first request finds it compiled."""
    table = table_of(tmp_path)
    live = LiveFlags(table)
    compiles = CompileCount(monkeypatch)

    async def run() -> None:
        put_many(table, 50)
        await until(lambda: compiles.calls == 50, timeout_s=10)
        put(table, 51, {**FLAG, "defaultVariant": "on"}, 51.0, key="f-0")
        await until(lambda: compiles.calls == 51, timeout_s=10)

    asyncio.run(run())
    changed = live.get("dev", "f-0")
    assert changed is not None and changed.version == 51
    assert all(live.get("dev", f"f-{i}") is not None for i in range(50))
    assert compiles.calls == 51, "no request compiled anything"


def test_compile_all_returns_once_every_flag_the_table_holds_is_compiled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table loaded from disk (no change heard), three environments: once `compile_all`
    returns no request compiles (the worker does not await it since ready stopped waiting for
    compiling; its background compiler takes the table in the same way)."""
    table = table_of(tmp_path)
    for n, environment in enumerate(("a", "b", "c")):
        put_many(table, 200, environment, first_seq=1 + n * 200)
    table.close()
    table.open()  # a restarted worker: the flags come from RocksDB, not from listeners
    live = LiveFlags(table)
    compiles = CompileCount(monkeypatch)
    assert live.queued() == 0, "nothing taken in before it is asked for"
    try:
        asyncio.run(live.compile_all())
        assert gc.get_freeze_count() > 0, "the compiled flags are kept out of full collections"
    finally:
        gc.unfreeze()  # this test process's objects go back to the collector
    assert compiles.calls == 600
    assert live.queued() == 0
    for environment in ("a", "b", "c"):
        flags = live.environment(environment)
        assert isinstance(flags, dict) and len(flags) == 200
    assert compiles.calls == 600


def test_reading_an_environment_compiles_only_the_queued_flags_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside an event loop nothing compiles in the background: what is read is compiled."""
    table = table_of(tmp_path)
    put_many(table, 100)
    live = LiveFlags(table)
    compiles = CompileCount(monkeypatch)
    flags = live.environment("dev")
    assert len(flags) == 100 and compiles.calls == 0
    assert flags["f-3"].key == "f-3" and compiles.calls == 1
    assert flags.get("missing") is None
    assert sorted(flags) == sorted(f"f-{i}" for i in range(100))
    assert len(list(flags.values())) == 100 and compiles.calls == 100
    put(table, 101, None, 101.0, key="f-3")
    assert "f-3" not in live.environment("dev") and live.get("dev", "f-3") is None
    assert compiles.calls == 100


def test_time_travel_to_the_live_version_reuses_it_and_the_cache_keeps_the_recent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = FlagTable(tmp_path, history_depth=10, stream_depth=10, change_id_depth=10)
    table.open()
    live = LiveFlags(table)
    for seq in range(1, 4):
        put(table, seq, {**FLAG, "defaultVariant": "on" if seq % 2 else "off"}, seq * 10.0)
    current = live.get("dev", "f")
    assert current is not None and current.version == 3
    compiles = CompileCount(monkeypatch)
    assert live.at("dev", "f", 35.0) is current, "the live version is not compiled again"
    assert compiles.calls == 0
    monkeypatch.setattr(live_flags, "PAST_VERSIONS_CACHED", 2)
    one, two = live.at("dev", "f", 15.0), live.at("dev", "f", 25.0)
    assert live.at("dev", "f", 15.0) is one, "read again: the most recent"
    put(table, 4, FLAG, 40.0, key="g")
    put(table, 5, FLAG, 50.0, key="g")
    assert isinstance(live.at("dev", "g", 45.0), LiveFlag)  # evicts the least recent (two)
    assert live.at("dev", "f", 15.0) is one
    assert live.at("dev", "f", 25.0) is not two


def test_a_bulk_read_mid_compile_compiles_its_environment_in_slices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`compiled(environment)`: every flag of it, compiled a slice per turn of the loop (the
    background compiler held back, as before ready), and the other environments left."""
    table = table_of(tmp_path)
    live = LiveFlags(table, compile_after=asyncio.Event())  # never set
    put_many(table, MANY, "bulk")
    put_many(table, 10, "other", first_seq=MANY + 1)
    compiles = CompileCount(monkeypatch)

    async def run() -> tuple[Any, int]:
        turns = 0

        async def tick() -> None:
            nonlocal turns
            while compiles.calls < MANY:
                await asyncio.sleep(0)
                turns += 1

        ticker = asyncio.ensure_future(tick())
        flags = await live.compiled("bulk")
        await ticker
        return flags, turns

    flags, turns = asyncio.run(run())
    assert isinstance(flags, dict) and len(flags) == MANY
    assert compiles.calls == MANY and turns > 10, f"{turns} turns of the loop"
    assert live.queued() == 10, "the other environment is the background compiler's"


def test_a_version_that_does_not_compile_is_never_served_its_last_valid_one_is(
    tmp_path: Path,
) -> None:
    """A record no decider validated (written straight to the changelog): the table applies
    it unparsed, the compile finds it invalid, and the flag keeps its last valid version."""
    table = FlagTable(tmp_path, history_depth=10, stream_depth=10, change_id_depth=10)
    table.open()
    told: list[tuple[int, str]] = []
    live = LiveFlags(table, on_invalid=lambda change, why: told.append((change.version, why)))
    put(table, 1, FLAG, 10.0)
    put(table, 2, {**FLAG, "defaultVariant": "on"}, 20.0)
    forged = AppliedChange("c3", "dev", "f", ChangeOp.PUT, 3, 3, {}, "x", 30.0, 30.0)
    for value in (b'{"definition": {"state": "ENABLED", "variants": 5}}', b"not json"):
        table.apply(0, forged.seq - 1, routed_change(change_meta(forged), value))
        served = live.get("dev", "f")
        assert served is not None and served.flag is not None and served.version == 2
        assert served.flag.default_variant == "on"
        forged = replace(forged, change_id=f"c{forged.seq + 1}", seq=forged.seq + 1)
        forged = replace(forged, version=forged.seq)
    assert [version for version, _ in told] == [3, 4] and all(why for _, why in told)


def test_an_invalid_first_version_has_nothing_to_fall_back_to(tmp_path: Path) -> None:
    table = FlagTable(tmp_path, history_depth=10, stream_depth=10, change_id_depth=10)
    table.open()
    live = LiveFlags(table)
    put(table, 1, {"state": "ENABLED"}, 10.0)
    served = live.get("dev", "f")
    assert served is not None and served.flag is None and served.problems, "PARSE_ERROR"


def test_a_catch_up_is_taken_in_from_the_table_once_the_gate_opens(tmp_path: Path) -> None:
    """Before `compile_after` is set (a catch-up) a table write costs LiveFlags nothing per
    change: what it had taken in is dropped, and the table is taken in when the gate opens,
    each flag at its latest version (a deleted one gone, an invalid one at its last valid)."""
    table = FlagTable(tmp_path, history_depth=10, stream_depth=10, change_id_depth=10)
    table.open()
    gate = asyncio.Event()
    live = LiveFlags(table, compile_after=gate)
    put(table, 1, FLAG, 10.0, key="kept")
    assert live.get("dev", "kept") is not None, "a read before the gate reads the table"
    put(table, 2, {**FLAG, "defaultVariant": "on"}, 20.0, key="kept")
    put(table, 3, FLAG, 30.0, key="gone")
    put(table, 4, None, 40.0, key="gone")
    put(table, 5, FLAG, 50.0, key="forged")
    forged = AppliedChange("c6", "dev", "forged", ChangeOp.PUT, 6, 6, {}, "x", 60.0, 60.0)
    table.apply(0, 5, routed_change(change_meta(forged), b"not json"))
    assert not live._compiled and not live._queued, "nothing followed change by change"

    async def open_gate() -> None:
        gate.set()
        await live.compile_all()

    asyncio.run(open_gate())
    kept, forged_now = live.get("dev", "kept"), live.get("dev", "forged")
    assert kept is not None and kept.version == 2 and kept.flag is not None
    assert kept.flag.default_variant == "on", "not the version read before the gate"
    assert live.get("dev", "gone") is None
    assert forged_now is not None and forged_now.version == 5 and forged_now.flag is not None
    put(table, 7, FLAG, 70.0, key="kept")
    after = live.get("dev", "kept")
    assert after is not None and after.version == 7, "after the gate: change by change"
