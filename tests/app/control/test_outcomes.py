"""What a waiting writer learns from the changelog and the dead-letter topic (real RocksDB)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry

from app.control.dead_letters import decode_dead_letter
from app.control.outcomes import Outcomes
from app.infra.metrics import Metrics
from app.infra.records import (
    AppliedChange,
    ChangeOp,
    DeadLetter,
    DeadLetterCode,
    Rejection,
    change_meta,
    dumps,
    read_binary_meta,
)
from app.infra.settings import Settings
from tables.flags import FlagTable
from tables.replication import FENCE_KEY, FlagReplication

FLAG = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}


class Record(NamedTuple):
    """The fields of aiokafka's ConsumerRecord the replication reads (a record without the
    decider's meta header: decoded whole)."""

    key: bytes | None
    value: bytes | None
    offset: int
    headers: tuple[tuple[str, bytes], ...] = ()


def change(change_id: str, seq: int, version: int) -> AppliedChange:
    return AppliedChange(change_id, "dev", "f", ChangeOp.PUT, seq, version, FLAG, "me", 1.0, 1.0)


def record(offset: int, applied: AppliedChange) -> Record:
    return Record(b"dev", dumps(applied.to_json()), offset)


def test_writers_learn_applied_repeated_and_lost_changes(tmp_path: Path) -> None:
    async def run() -> dict[str, Any]:
        table = FlagTable(tmp_path, history_depth=5, stream_depth=5, change_id_depth=5)
        table.open()
        replication = FlagReplication(Settings.from_env(), table, Metrics(CollectorRegistry()))
        outcomes = Outcomes(table)
        replication.on_applied(outcomes.heard_applied)
        waiting = {cid: outcomes.expect(cid) for cid in ("first", "again", "lost")}
        await replication._apply(0, [record(0, change("first", 1, 1))])
        first = await waiting.pop("first")
        waiting["again"] = outcomes.expect("first")
        await replication._apply(
            0,
            [
                Record(FENCE_KEY, b"", 1),
                record(2, change("first", 1, 1)),  # a redelivered decision
                record(3, change("lost", 1, 1)),  # another decision for the same seq
                Record(b"dev", b"\xff not json", 4),
            ],
        )
        heard = {"first": first, **{k: await v for k, v in waiting.items()}}
        assert table.position(0) == 5
        table.close()
        return heard

    heard = asyncio.run(run())
    assert heard["first"] == change("first", 1, 1)
    assert heard["again"] == change("first", 1, 1)
    lost = heard["lost"]
    assert isinstance(lost, Rejection)
    assert lost.code is DeadLetterCode.VERSION_CONFLICT
    assert lost.current_version == 1
    assert lost.change_id == "lost"


def test_a_dead_letter_read_back_is_the_rejection_its_writer_hears() -> None:
    letter = DeadLetter(
        DeadLetterCode.INVALID_DEFINITION,
        "the flag definition has 1 problem(s)",
        "flag-changes",
        2,
        41,
        b"\xff\x00 not utf-8",
        problems=(("$.variants", "must be an object"),),
        change_id="c-1",
        environment="dev",
        flag="f",
        current_version=3,
        at=5.0,
    )
    assert decode_dead_letter(dumps(letter.to_json())) == letter
    assert letter.rejection() == Rejection(
        DeadLetterCode.INVALID_DEFINITION,
        "the flag definition has 1 problem(s)",
        (("$.variants", "must be an object"),),
        current_version=3,
        change_id="c-1",
    )


def test_an_unreadable_dead_letter_is_none_not_an_exception() -> None:
    for raw in (None, b"", b"[1]", b"\xff", b'{"code": "NOT_A_CODE"}', b'{"code": "MALFORMED"}'):
        assert decode_dead_letter(raw) is None


def test_a_writer_hears_its_change_and_no_change_is_read_while_none_waits(
    tmp_path: Path,
) -> None:
    """`heard_applied` gets the changes a slice read, in runs: with no writer waiting (a
    catch-up) it reads none of them, so none is decoded; a waiting writer gets its own."""
    table = FlagTable(tmp_path, history_depth=5, stream_depth=5, change_id_depth=5)
    table.open()
    outcomes = Outcomes(table)
    changes = [lazy(change(f"c{n}", n, n)) for n in (1, 2)]
    outcomes.heard_applied(changes, True)
    assert [type(c).__name__ for c in changes] == ["_UndecodedChange"] * 2, "none read"

    async def waited() -> object:
        waiting = outcomes.expect("c2")
        outcomes.heard_applied(changes, True)
        return await waiting

    assert asyncio.run(waited()) is changes[1]
    table.close()


def lazy(applied: AppliedChange) -> AppliedChange:
    """`applied` as a catch-up reads it from its record: undecoded."""
    read = read_binary_meta(change_meta(applied), dumps(applied.to_json()))
    assert read is not None
    return read[0]
