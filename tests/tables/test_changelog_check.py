"""The changelog check against a real broker: the same log, a shorter one, a slow broker."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from app.infra.settings import Settings
from tables.changelog_check import fingerprint, same_log
from tables.flags import FlagTable
from tests.conftest import create_topic, produce
from tests.kafka_counter import CountedBroker, counted_broker

RECORDS = [(b"k%d" % i, b"v%d" % i) for i in range(7)]  # one batch: Tansu's end offset says 1


counted = pytest.fixture(counted_broker, scope="module", name="counted")


def a_log(brokers: str) -> TopicPartition:
    """A one-partition topic holding RECORDS, written in one batch."""
    topic = asyncio.run(create_topic(brokers, "check"))
    produce(brokers, topic, RECORDS, partition=0)
    return TopicPartition(topic, 0)


def table_at(tmp_path: Path, offset: int, record: tuple[bytes, bytes]) -> FlagTable:
    """A table that applied `record` at `offset` of partition 0 last."""
    table = FlagTable(tmp_path, history_depth=5, stream_depth=5, change_id_depth=5)
    table.open()
    table.apply(0, offset, None, fingerprint(*record))
    return table


def check(
    monkeypatch: pytest.MonkeyPatch,
    brokers: str,
    table: FlagTable,
    tp: TopicPartition,
    timeout_s: float = 10.0,
) -> bool:
    monkeypatch.setenv("FLAGSTREAM_BROKERS", brokers)
    return asyncio.run(same_log(Settings.from_env(), table, [tp], timeout_s))


def test_the_log_the_table_was_built_from_passes(
    counted: CountedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tp = a_log(counted.brokers)
    assert check(monkeypatch, counted.brokers, table_at(tmp_path, 6, RECORDS[6]), tp)


def test_another_record_at_the_offset_is_another_log(
    counted: CountedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tp = a_log(counted.brokers)
    assert not check(monkeypatch, counted.brokers, table_at(tmp_path, 5, RECORDS[6]), tp)


def test_a_log_that_ends_before_the_table_is_told_by_a_fetch_not_by_waiting(
    counted: CountedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded broker answers a fetch past the end empty, with the true end as its high
    watermark: decided at the first answer, long before the check's time is up."""
    tp = a_log(counted.brokers)
    table = table_at(tmp_path, 20, RECORDS[6])
    started = time.monotonic()
    assert not check(monkeypatch, counted.brokers, table, tp, timeout_s=60.0)
    assert time.monotonic() - started < 30, "decided by waiting out the check"


def test_a_broker_that_does_not_answer_in_time_is_not_another_log(
    counted: CountedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen failing before: the check said False (another log) when its reads timed out, and a
    worker on a loaded machine threw its table away and served an empty one while rebuilding."""
    tp = a_log(counted.brokers)
    table = table_at(tmp_path, 6, RECORDS[6])
    counted.hold_fetches = True
    try:
        with pytest.raises(TimeoutError):
            check(monkeypatch, counted.brokers, table, tp, timeout_s=2.0)
    finally:
        counted.hold_fetches = False
