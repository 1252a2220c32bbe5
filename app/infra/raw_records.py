"""Fetched records as aiokafka's record reader yields them, for a consumer that asks.

A catch-up reads the whole changelog, and aiokafka turns every record it fetches into a
`ConsumerRecord` (a dataclass of eleven fields, its headers copied into a tuple): about a
sixth of a starting worker's catch-up (0.52 -> 0.43 s for 30,000 records in process). The
flag table reads four fields of each record (offset, key, value, headers), which the
reader's own record (aiokafka.record's `DefaultRecord`) has already. A consumer created
with `key_deserializer=RAW_RECORDS` (once `install_raw_records()` ran) gets those from
`getmany`; every other consumer gets `ConsumerRecord`s as before.

aiokafka has no option for it: its fetcher builds `PartitionRecords` by the module's name,
so `install_raw_records()` puts a subclass there that differs only for such a consumer
(looked at once per fetch response; nothing per record for any consumer). Positions, errors
(an offset out of range), control batches and aborted transactions stay aiokafka's own
code. Before it runs, a marked consumer gets `ConsumerRecord`s, their keys unchanged.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["RAW_RECORDS", "install_raw_records"]

# aiokafka ships no types for its fetcher (typings/aiokafka covers what the project calls).
_fetcher: Any = importlib.import_module("aiokafka.consumer.fetcher")
_KEY_DESERIALIZER_AT = (
    4  # PartitionRecords(tp, records, aborted, fetch_offset, key_deserializer,...)
)


def RAW_RECORDS(key: bytes | None) -> bytes | None:  # noqa: N802  # a marker, read as a constant
    """The key deserializer that marks a consumer whose records come as read (the key as is
    when `install_raw_records()` has not run)."""
    return key


def _as_read(_tp: Any, record: Any) -> Any:
    return record


class _PartitionRecords(_fetcher.PartitionRecords):  # type: ignore[misc]
    """aiokafka's records of one fetch response; as read for a consumer marked `RAW_RECORDS`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        marker = kwargs.get("key_deserializer")
        if marker is None and len(args) > _KEY_DESERIALIZER_AT:
            marker = args[_KEY_DESERIALIZER_AT]
        if marker is RAW_RECORDS:
            # Read per record by `_unpack_records`: this response's records only.
            self._consumer_record = _as_read


def install_raw_records() -> None:
    """Let consumers marked `RAW_RECORDS` get their records as read (idempotent)."""
    if _fetcher.PartitionRecords is not _PartitionRecords:
        _fetcher.PartitionRecords = _PartitionRecords
