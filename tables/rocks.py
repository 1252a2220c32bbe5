"""What both RocksDB tables need of rocksdict beyond get and write: a prefix scan."""

from __future__ import annotations

from collections.abc import Iterator

from rocksdict import Rdict

__all__ = ["under"]


def under(db: Rdict, start: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of every key that starts with `start`, in key order (raw mode)."""
    it = db.iter()
    it.seek(start)
    while it.valid():
        key: bytes = it.key()
        if not key.startswith(start):
            break
        yield key, it.value()
        it.next()
