"""Whether the changelog is the one the flag table was built from, and what to do if not.

The table stores, per partition, the fingerprint of the last record it applied. At start and
whenever the broker comes back the record before each stored position is read again: a broker
that lost its data (the embedded one keeps nothing across a restart) or another cluster
behind the same address fails the check, and the table is rebuilt from the changelog instead
of serving flags that no longer exist. The old table is kept on disk first, for
`flagstream restore`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from app.infra.kafka_security import kafka_client_options
from app.infra.settings import Settings
from app.infra.shutdown import stop_within
from tables.flags import FlagTable

__all__ = ["KEPT_LOST_TABLES", "fingerprint", "keep_lost_table", "same_log"]

log = logging.getLogger(__name__)

KEPT_LOST_TABLES = 3  # tables moved aside after a broker lost its data, newest kept
CHECK_TIMEOUT_S = 10.0  # longest the check may wait for the broker at each step


def fingerprint(key: bytes | None, value: bytes | None) -> str:
    """A short digest of a changelog record, to recognise it after a restart."""
    return hashlib.blake2b((key or b"") + b"\0" + (value or b""), digest_size=8).hexdigest()


async def same_log(
    settings: Settings,
    table: FlagTable,
    partitions: list[TopicPartition],
    timeout_s: float = CHECK_TIMEOUT_S,
) -> bool:
    """Whether the record before each stored position is the one the table applied.

    Read with a consumer of its own, so the replication's positions are left alone. Raises
    `TimeoutError` when the broker did not answer in time: a slow broker (a loaded machine)
    is not another log, and taking it for one threw a good table away.
    """
    expected = {
        tp: (table.position(tp.partition) - 1, table.last_fingerprint(tp.partition))
        for tp in partitions
        if table.position(tp.partition) > 0
    }
    if not expected:
        return True
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        **kafka_client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
    )
    await asyncio.wait_for(consumer.start(), timeout_s)
    try:
        return await _records_match(consumer, expected, timeout_s)
    finally:
        await stop_within(consumer.stop())


async def _records_match(
    consumer: AIOKafkaConsumer,
    expected: dict[TopicPartition, tuple[int, str]],
    timeout_s: float,
) -> bool:
    """Read the record at each expected offset and compare (offset, fingerprint).

    A partition's log ends before the offset when a fetch answered with a high watermark at
    or below it (Kafka answers out of range instead; the embedded broker answers empty, and
    its fetch high watermark is the true end where its ListOffsets is not).
    """
    consumer.assign(list(expected))
    ends = await asyncio.wait_for(consumer.end_offsets(list(expected)), timeout_s)
    if any(ends[tp] == 0 for tp in expected):
        return False  # an empty partition: short end offsets are never zero for a real log
    for tp, (offset, _) in expected.items():
        consumer.seek(tp, offset)
    found: dict[TopicPartition, tuple[int, str]] = {}
    deadline = time.monotonic() + timeout_s
    while len(found) < len(expected):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"read {len(found)} of {len(expected)} changelog records")
        try:
            batches = await consumer.getmany(*expected, timeout_ms=200, max_records=1)
        except KafkaError:  # out of range: that offset is not in this log
            return False
        for tp, records in batches.items():
            if records and tp not in found:
                found[tp] = (records[0].offset, fingerprint(records[0].key, records[0].value))
        for tp, (offset, _) in expected.items():
            end = consumer.highwater(tp)
            if tp not in found and end is not None and end <= offset:
                return False  # a fetch answered: the log ends before the record
    return all(found.get(tp) == want for tp, want in expected.items())


def keep_lost_table(table: FlagTable) -> Path | None:
    """Copy the table to `<data dir>/flags.lost-<unix time>` before it is wiped.

    The old table is what `flagstream restore` needs to re-seed a broker that lost its data;
    the newest `KEPT_LOST_TABLES` copies are kept. None when there was nothing worth keeping
    or the copy failed (logged).
    """
    if not table.environments():
        return None
    path = table.path
    table.close()
    try:
        kept = path.with_name(f"{path.name}.lost-{int(time.time())}")
        shutil.copytree(path, kept, dirs_exist_ok=True)
        for old in sorted(path.parent.glob(f"{path.name}.lost-*"))[:-KEPT_LOST_TABLES]:
            shutil.rmtree(old, ignore_errors=True)
        return kept
    except OSError as exc:
        log.error("could not keep the old flag table: %s", exc)
        return None
    finally:
        table.open()
