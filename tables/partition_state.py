"""State owned per source partition, in RocksDB, with the source offsets it was folded to.

A consumer that folds a partition of a topic into state (the experiment attribution, issue 10)
writes the new values and the offsets they bring the partition to in one RocksDB write batch:
after a crash the state and the offsets agree, so a redelivered record (at or below its
source's offset) is known applied and skipped, and nothing is counted twice. Values are bytes:
what they mean is the folding module's business (tables/ sits below app/experiments).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch

from tables.rocks import under

__all__ = ["PartitionState"]


def _value_key(partition: int, key: str) -> bytes:
    return f"{partition:06d}/v/{key}".encode()


def _offset_key(partition: int, source: str) -> bytes:
    return f"{partition:06d}/o/{source}".encode()


class PartitionState:
    """Values and source offsets per partition; every change of a partition is one batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: Rdict | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(self.path), Options(raw_mode=True))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _open_db(self) -> Rdict:
        if self._db is None:
            raise RuntimeError("the partition state is not open")
        return self._db

    def get(self, partition: int, key: str) -> bytes | None:
        value = self._open_db().get(_value_key(partition, key))
        return None if value is None else bytes(value)

    def scan(self, partition: int, prefix: str) -> Iterator[tuple[str, bytes]]:
        """(key, value) of the partition's values whose key starts with `prefix`, in key order."""
        skip = len(_value_key(partition, ""))
        for raw_key, value in under(self._open_db(), _value_key(partition, prefix)):
            yield raw_key[skip:].decode(), value

    def offset(self, partition: int, source: str) -> int:
        """The next offset of `source` to fold into this partition's state (0: none yet)."""
        value = self._open_db().get(_offset_key(partition, source))
        return 0 if value is None else int(value)

    def apply(self, partition: int, puts: Mapping[str, bytes], offsets: Mapping[str, int]) -> None:
        """Write `puts` and the sources' next offsets at once: both or neither survive a crash."""
        batch = WriteBatch(raw_mode=True)
        for key, value in puts.items():
            batch.put(_value_key(partition, key), value)
        for source, offset in offsets.items():
            batch.put(_offset_key(partition, source), str(offset).encode())
        self._open_db().write(batch)

    def delete_prefix(self, partition: int, prefix: str) -> None:
        """Drop the partition's values whose key starts with `prefix` (state to be rebuilt)."""
        batch = WriteBatch(raw_mode=True)
        for raw_key, _ in under(self._open_db(), _value_key(partition, prefix)):
            batch.delete(raw_key)
        self._open_db().write(batch)
