"""PartitionState on a real RocksDB: values and offsets per partition, kept across reopening."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tables.partition_state import PartitionState


@pytest.fixture
def state(tmp_path: Path) -> Iterator[PartitionState]:
    table = PartitionState(tmp_path / "state")
    table.open()
    yield table
    table.close()


def test_values_and_offsets_survive_reopening(tmp_path: Path) -> None:
    table = PartitionState(tmp_path / "state")
    table.open()
    table.apply(3, {"s/dev/exp/ann": b"A", "t/dev/exp": b"T"}, {"exposures": 41, "events": 7})
    table.apply(3, {"s/dev/exp/ann": b"A2"}, {"exposures": 42})
    table.close()
    table.open()
    assert table.get(3, "s/dev/exp/ann") == b"A2"
    assert table.get(3, "t/dev/exp") == b"T"
    assert (table.offset(3, "exposures"), table.offset(3, "events")) == (42, 7)
    assert table.offset(3, "never") == 0
    table.close()


def test_partitions_do_not_see_each_other(state: PartitionState) -> None:
    state.apply(1, {"s/a": b"1"}, {"exposures": 5})
    state.apply(10, {"s/a": b"10"}, {"exposures": 50})
    assert (state.get(1, "s/a"), state.get(10, "s/a"), state.get(2, "s/a")) == (b"1", b"10", None)
    assert (state.offset(1, "exposures"), state.offset(10, "exposures")) == (5, 50)


def test_scan_reads_one_prefix_of_one_partition_in_key_order(state: PartitionState) -> None:
    state.apply(2, {"s/dev/b": b"b", "s/dev/a": b"a", "s/prod/a": b"x", "t/dev": b"t"}, {})
    state.apply(3, {"s/dev/c": b"other partition"}, {})
    assert list(state.scan(2, "s/dev/")) == [("s/dev/a", b"a"), ("s/dev/b", b"b")]
    assert list(state.scan(2, "s/")) == [("s/dev/a", b"a"), ("s/dev/b", b"b"), ("s/prod/a", b"x")]
    assert list(state.scan(2, "nothing/")) == []


def test_delete_prefix_drops_those_values_of_one_partition_only(state: PartitionState) -> None:
    state.apply(4, {"s/a": b"4", "t/a": b"t"}, {"exposures": 9})
    state.apply(5, {"s/a": b"5"}, {"exposures": 8})
    state.delete_prefix(4, "s/")
    assert (state.get(4, "s/a"), state.get(4, "t/a"), state.offset(4, "exposures")) == (
        None,
        b"t",
        9,
    )
    assert (state.get(5, "s/a"), state.offset(5, "exposures")) == (b"5", 8)


def test_a_closed_state_refuses_to_be_read(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not open"):
        PartitionState(tmp_path / "state").get(0, "k")
