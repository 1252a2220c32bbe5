"""An apply slice in process (records as a fetch returns them, no broker): what it counts,
tells and stops at."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

from prometheus_client import CollectorRegistry

from app.engine import JsonObject
from app.infra.metrics import Metrics
from app.infra.records import AppliedChange, ChangeOp, changelog_headers, dumps
from app.infra.settings import Settings
from tables.flags import FlagTable
from tables.replication import CLOCK_EVERY, FlagReplication

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
    replication.on_applied(lambda change, fresh: heard.append((change.seq, fresh)))
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
