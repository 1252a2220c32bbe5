"""The flag table every worker holds in full: current versions, history and the change log.

It is a state machine over the `flags-changelog` topic, persisted in RocksDB (rocksdict). The
offset of the next changelog record of each partition is written in the same RocksDB write
batch as the state it produced, so a worker that stops anywhere resumes exactly where its
state ends: no record is applied twice or skipped, whatever the broker says its end offsets
are. Reads come from an in-memory mirror of the current versions (a few KB per flag), so
serving a flag never touches the disk.

A catch-up (a worker starting, before ready) needs only the mirror to serve: its writes are
queued (`ChangelogBatch.commit(defer=True)`) and written after ready a batch per loop turn
(`persist_slice`), each with its offset, so the offset RocksDB holds moves only with what is
written, and a crash before the write re-reads those records to the same state. What reads
RocksDB (history, a version, change ids) reads the queue too, newest first, and RocksDB as the
queue's writes will leave it (what they will trim is not read): a request right after ready
never waits for the queue to be written. `close` writes it (a clean stop).

RocksDB keys (UTF-8, "/" separated; environment and flag keys cannot contain "/"), store
format 2 (`v/format`): each change's value is stored once, as read from the changelog:
    v/format                          the store format (2); a table of another format (or none:
                                      format 1 stored three decoded copies of each change) is
                                      rebuilt from the changelog when opened for writing
    o/{partition:06d}                 next changelog offset to apply, ":", fingerprint of the
                                      record before it (to recognise the log after a restart)
    h/{env}/{flag}/{version:012d}     the last `history_depth` versions of a flag: the change's
                                      meta (`app.infra.records.change_meta`: binary, its length
                                      in it; or an older JSON one), a NUL byte, then the
                                      changelog record's value as read
    f/{env}/{flag}                    the flag's latest version (a deleted flag's too), as ASCII:
                                      its change is the history entry of that version; written
                                      once per flag per write batch (latest wins)
    s/{env}/{seq:012d}                "{flag}/{version}" of each of the last `stream_depth`
                                      changes of an environment (the change: its history entry)
    d/{partition:06d}                 highest `flag-changes` offset decided from that partition
    c/{env}/{change_id}               the meta of the change a change id produced (no
                                      definition), for the last `change_id_depth` changes
    n/{env}/{seq:012d}                the change id of that seq, to forget it `change_id_depth`
                                      changes later

A change of the stream whose version the history no longer keeps (a flag changed more than
`history_depth` times within the last `stream_depth` changes of its environment) is still in
memory while the worker runs; after a reopen the change log starts after it (older seqs get a
snapshot, as beyond `stream_depth`). The mirror holds each change with its definition still
unparsed (`app.infra.records.routed_change`): parsed when first read (compiling, after ready).

Two guards keep a command from being applied twice, each written in the batch of the change
it guards. `d/` is exact and forever: commands of a partition are decided in offset order, so
an offset at or below the highest decided one is a redelivery (a rebalance, a restart, a
consumer group whose committed offsets expired), however old. `c/` catches the same request
sent again as a new record (a writer's retry with its `Idempotency-Key`), within a window.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rocksdict import AccessType, Options, Rdict, WriteBatch

from app.infra.records import (
    CHANGE_HEADER,
    AppliedChange,
    MetaFields,
    change_from_meta,
    change_meta,
    dumps,
    loads,
    meta_length,
    read_binary_meta,
    routed_change,
)
from tables.rocks import under

__all__ = [
    "CLOCK_EVERY",
    "RANGE_TRIM_MIN",
    "STORE_FORMAT",
    "BatchListener",
    "ChangelogBatch",
    "FlagTable",
    "Listener",
]

log = logging.getLogger(__name__)

Listener = Callable[[AppliedChange], None]
BatchListener = Callable[[list[AppliedChange]], None]
# What a changelog record holds: its change (None: a fence, a record refused or unreadable)
# and the meta header it was read from (None: decoded from its value).
RecordReader = Callable[[Any], tuple[AppliedChange | None, bytes | None]]
# A fresh change of a batch as its loop read it: the change, its record's value and meta as
# read (None: encoded when written), then what the table reads of every change it takes in
# (environment, flag, change id) or writes (seq, version), from the loop's own unpack of the
# meta: an undecoded change (`app.infra.records.read_binary_meta`) stays so until ready.
Entry = tuple[AppliedChange, bytes | None, bytes | None, str, str, str, int, int]

CLOCK_EVERY = 8  # records added between two looks at the clock (`ChangelogBatch.add_records`)

FORMAT_KEY = b"v/format"
# `s/` entries a write trims from one environment, from which on they go in one range deletion
# (fewer make point deletions: a range deletion costs each later read of the memtable a look).
RANGE_TRIM_MIN = 32
STORE_FORMAT = b"2"


class FlagTable:
    """Current flag versions per environment, their history, and the gap-free change log."""

    def __init__(
        self, path: Path, *, history_depth: int, stream_depth: int, change_id_depth: int
    ) -> None:
        self.path = path
        self.history_depth = history_depth
        self.stream_depth = stream_depth
        self.change_id_depth = change_id_depth
        self._db: Rdict | None = None
        self._latest: dict[str, dict[str, AppliedChange]] = {}
        self._log: dict[str, deque[AppliedChange]] = {}
        self._positions: dict[int, int] = {}
        self._decided: dict[int, int] = {}
        self._fingerprints: dict[int, str] = {}
        self._listeners: list[Listener] = []
        self._batch_listeners: list[BatchListener] = []
        # Committed batches not written to RocksDB yet, in changelog order (a catch-up defers
        # its writes: `persist_slice`), and how many fresh changes they hold.
        self._pending: deque[_PendingWrite] = deque()
        self._pending_records = 0
        # The queued changes by environment: by change id (the newest use) and by flag
        # (oldest first), so a read after ready finds them without scanning the queue. Built
        # as each batch is taken in (`_take_in`): built at the first read instead, that read
        # (right after ready) would index a whole catch-up's queue first.
        self._queued_ids: dict[str, dict[str, AppliedChange]] = {}
        self._queued_flags: dict[str, dict[str, list[AppliedChange]]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def open(self, *, read_only: bool = False) -> None:
        """Open RocksDB and load the mirror; the table then holds what it held when closed.

        `read_only` (for `flagstream restore`) changes no byte of the table and takes no lock:
        a missing table is an error, and writes fail. What a previous open held in memory is
        dropped first (a table closed and opened again holds what its RocksDB holds).
        """
        self._forget_memory()
        if read_only:
            access = AccessType.read_only()
            self._db = Rdict(str(self.path), Options(raw_mode=True), access_type=access)
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self._db = Rdict(str(self.path), Options(raw_mode=True))
            self._db = self._in_store_format(self._db)
        for key, value in self._scan("o/"):
            offset, _, fingerprint = value.decode().partition(":")
            self._positions[int(key[2:])] = int(offset)
            self._fingerprints[int(key[2:])] = fingerprint
        for key, value in self._scan("d/"):
            self._decided[int(key[2:])] = int(value)
        for key, value in self._scan("f/"):
            environment, _, flag = key[2:].partition("/")
            change = self._current(environment, flag, value)
            if change is not None:
                self._latest.setdefault(change.environment, {})[change.flag] = change
        for key, value in self._scan("s/"):
            environment, _, seq = key[2:].partition("/")
            self._load_stream_entry(environment, int(seq), value)

    def _in_store_format(self, db: Rdict) -> Rdict:
        """`db`, emptied first when it holds a table of another store format: the changelog
        (the source of truth) then fills it again from its start, in this format."""
        if db.get(FORMAT_KEY) == STORE_FORMAT:
            return db
        if next(iter(under(db, b"")), None) is not None:
            log.warning(
                "the flag table in %s has an older store format: rebuilding it from the changelog",
                self.path,
            )
            db.close()
            Rdict.destroy(str(self.path))
            db = Rdict(str(self.path), Options(raw_mode=True))
        db[FORMAT_KEY] = STORE_FORMAT
        return db

    def _current(self, environment: str, flag: str, value: bytes) -> AppliedChange | None:
        """The change an `f/` entry names (format 1: the change itself)."""
        if value[:1] == b"{":
            return _load(value)
        return self._version(environment, flag, int(value))

    def _version(self, environment: str, flag: str, version: int) -> AppliedChange | None:
        """A version of a flag from its history (queued writes included); None when no
        longer kept."""
        if self._pending:
            queued = self._queued_versions(environment, flag)
            if version in {c.version - self.history_depth for c in queued}:
                return None  # a queued write trims it
            for change in queued:
                if change.version == version:
                    return change
        kept = self._open_db().get(f"h/{environment}/{flag}/{version:012d}".encode())
        return None if kept is None else _stored(kept)

    def _queued_versions(self, environment: str, flag: str) -> Sequence[AppliedChange]:
        """The flag's changes whose writes are queued, oldest first."""
        return self._queued_flags.get(environment, {}).get(flag, ())

    def _queued_change(self, environment: str, change_id: str) -> AppliedChange | None:
        """The newest queued change with this change id."""
        return self._queued_ids.get(environment, {}).get(change_id)

    def _index(self, entries: Sequence[Entry]) -> None:
        ids, flags = self._queued_ids, self._queued_flags
        for change, _, _, environment, flag, change_id, _, _ in entries:
            ids.setdefault(environment, {})[change_id] = change
            flags.setdefault(environment, {}).setdefault(flag, []).append(change)

    def _load_stream_entry(self, environment: str, seq: int, value: bytes) -> None:
        """Append the change an `s/` entry names to the in-memory log (in seq order); one the
        history no longer keeps (or holds with another seq: a foreign writer reused the
        version) cuts the log there (older seqs get a snapshot)."""
        if value[:1] == b"{":
            self._remember(_load(value))
            return
        flag, _, version_text = value.decode().rpartition("/")
        version = int(version_text)
        current = self._latest.get(environment, {}).get(flag)
        if current is not None and current.version == version:
            change: AppliedChange | None = current  # the same object, not a second copy
        else:
            change = self._version(environment, flag, version)
        if change is None or change.seq != seq:
            self._log.pop(environment, None)
            return
        self._remember(change)

    def close(self) -> None:
        """Write what is still queued (a clean stop loses nothing), then close RocksDB."""
        if self._db is not None:
            self.flush()
            self._db.close()
            self._db = None

    def wipe(self) -> None:
        """Forget everything, on disk too: the table is rebuilt from the changelog's start."""
        self._drop_pending()
        self.close()
        Rdict.destroy(str(self.path))
        self.open()

    def _forget_memory(self) -> None:
        self._drop_pending()
        self._latest.clear()
        self._log.clear()
        self._positions.clear()
        self._decided.clear()
        self._fingerprints.clear()

    def listen(self, listener: Listener) -> None:
        """Call `listener` with every change applied from now on (in changelog order)."""
        self._listeners.append(listener)

    def listen_batches(self, listener: BatchListener) -> None:
        """Call `listener` with the changes of each write applied from now on (in changelog
        order, never empty), before the `listen` listeners hear of them one by one: one call
        per write batch rather than per change (a catch-up applies thousands)."""
        self._batch_listeners.append(listener)

    # -- reads -----------------------------------------------------------------------------

    def environments(self) -> list[str]:
        return sorted(self._latest)

    def get(self, environment: str, flag: str) -> AppliedChange | None:
        """The latest version of a flag, a deleted one included (its definition is None)."""
        return self._latest.get(environment, {}).get(flag)

    def has_environment(self, environment: str) -> bool:
        """Whether the environment ever had a flag (names callers make up do not)."""
        return environment in self._latest

    def keys(self, environment: str) -> list[str]:
        """Every flag key the environment ever had, deleted ones included."""
        return sorted(self._latest.get(environment, {}))

    def live_flags(self, environment: str) -> dict[str, AppliedChange]:
        """The flags of an environment that exist now, by key."""
        return {k: c for k, c in self._latest.get(environment, {}).items() if not c.deleted}

    def environment_seq(self, environment: str) -> int:
        """The sequence number of the environment's last applied change (0: none yet)."""
        log = self._log.get(environment)
        return log[-1].seq if log else 0

    def applied(self, environment: str, change_id: str) -> AppliedChange | None:
        """The change this change id produced, if it is among the last `change_id_depth` ones.

        Its definition comes from the flag's history; a version the history no longer keeps
        comes back without one. Changes whose writes are queued are looked at first (the
        newest use of a change id keeps it).
        """
        floor = self.environment_seq(environment) - self.change_id_depth  # out of the window
        queued = self._queued_change(environment, change_id) if self._pending else None
        if queued is not None:  # the newest use: an older one, RocksDB's too, is older still
            if queued.seq <= floor:
                return None
            kept = self._version(environment, queued.flag, queued.version)
            return kept if kept is not None else replace(queued, definition=None)
        raw = self._open_db().get(f"c/{environment}/{change_id}".encode())
        if raw is None:
            return None
        change = _entry(raw)
        if self._pending and change.seq <= floor:
            return None  # a queued write trims it
        kept = self._version(environment, change.flag, change.version)
        return kept if kept is not None else change

    def decided(self, partition: int) -> int:
        """The highest `flag-changes` offset of `partition` decided so far (-1: none)."""
        return self._decided.get(partition, -1)

    def changes_after(self, environment: str, seq: int) -> list[AppliedChange] | None:
        """Every change after `seq`, or None when the log cannot say (a snapshot is due).

        None also for a `seq` beyond the environment's: the client followed another cluster
        (or a broker that lost its data), and waiting for its number would hide every change.
        """
        log = self._log.get(environment, deque())
        current = self.environment_seq(environment)
        if seq > current:
            return None
        if seq == current:
            return []
        if not log or log[0].seq > seq + 1:
            return None
        return [change for change in log if change.seq > seq]

    def history(self, environment: str, flag: str) -> list[AppliedChange]:
        """The last `history_depth` versions of a flag, newest first (queued writes'
        versions too)."""
        versions = [_stored(v) for _, v in self._scan(f"h/{environment}/{flag}/")]
        if not self._pending:
            return versions[::-1]
        # As the queued writes will leave it: each writes its version and trims the one
        # `history_depth` below it.
        by_version = {change.version: change for change in versions}
        queued = self._queued_versions(environment, flag)
        by_version.update((change.version, change) for change in queued)
        for change in queued:
            by_version.pop(change.version - self.history_depth, None)
        return [by_version[version] for version in sorted(by_version, reverse=True)]

    def position(self, partition: int) -> int:
        """The next changelog offset this table will apply for `partition`."""
        return self._positions.get(partition, 0)

    def last_fingerprint(self, partition: int) -> str:
        """The fingerprint of the last record applied from `partition` ("" before any)."""
        return self._fingerprints.get(partition, "")

    # -- writes ----------------------------------------------------------------------------

    def apply(
        self, partition: int, offset: int, change: AppliedChange | None, fingerprint: str = ""
    ) -> bool:
        """Apply the changelog record at (partition, offset); None moves the offset only.

        Returns False for a record already reflected in the table (a seq not above the
        environment's), which happens only when a changelog is rewritten by a retrying
        producer; the offset still moves so the record is not read again.
        """
        batch = self.batch(partition)
        fresh = batch.add(offset, change)
        batch.commit(fingerprint)
        return fresh

    def batch(self, partition: int) -> ChangelogBatch:
        """Records of `partition` to apply together: one RocksDB write for all of them."""
        return ChangelogBatch(self, partition)

    # -- writes queued by a catch-up ----------------------------------------------------------

    def pending(self) -> int:
        """How many applied records are not written to RocksDB yet (queued by a catch-up)."""
        return self._pending_records

    def persisted_position(self, partition: int) -> int:
        """The next offset of `partition` a restart would read from (what RocksDB holds)."""
        raw = self._open_db().get(f"o/{partition:06d}".encode())
        return 0 if raw is None else int(raw.decode().partition(":")[0])

    def persist_slice(self) -> bool:
        """Write the oldest queued batch to RocksDB (in changelog order: its offset moves with
        its state); whether more are queued. One batch is one catch-up slice of records."""
        if not self._pending:
            return False
        pending = self._pending[0]
        _StateWrite(self, pending).write()
        self._pending.popleft()
        self._pending_records -= pending.records
        if not self._pending:
            self._drop_index()
        else:
            self._unindex(pending)
        return bool(self._pending)

    def flush(self) -> None:
        """Write every queued batch (a clean stop, a test)."""
        while self.persist_slice():
            pass

    def _drop_pending(self) -> None:
        self._pending.clear()
        self._pending_records = 0
        self._drop_index()

    def _drop_index(self) -> None:
        self._queued_ids.clear()
        self._queued_flags.clear()

    def _queue(self, pending: _PendingWrite) -> None:
        """Queue a committed batch's write (its changes are indexed for reads as they are
        taken in: `_take_in`)."""
        self._pending.append(pending)
        self._pending_records += pending.records

    def _take_in(self, entries: list[Entry], queued: bool) -> None:
        """Put a committed batch's fresh changes in the mirror (each flag's latest, each
        environment's change log) and, when its write is `queued`, in
        the queue's index.

        One pass over the batch, each environment's dicts looked up once per run of it, the
        environment and flag as the batch's loop read them (the changes are not read): a
        catch-up takes in every record of the changelog here (a run is most of a batch).
        """
        if queued:
            self._index(entries)
        latest, logs, stream_depth = self._latest, self._log, self.stream_depth
        current = None
        flags: dict[str, AppliedChange] = {}
        log: deque[AppliedChange] = deque()
        for change, _, _, environment, flag, _, _, _ in entries:
            if environment != current:
                current = environment
                flags = latest.setdefault(environment, {})
                found = logs.get(environment)
                if found is None:
                    found = logs[environment] = deque(maxlen=stream_depth)
                log = found
            flags[flag] = change
            log.append(change)  # the oldest falls out past `stream_depth`

    def _unindex(self, pending: _PendingWrite) -> None:
        """Forget a written batch's changes from the queue's index (they are the oldest)."""
        written: dict[tuple[str, str], int] = {}
        for change, _, _, environment, flag, change_id, _, _ in pending.entries:
            ids = self._queued_ids[environment]
            if ids.get(change_id) is change:
                del ids[change_id]
            key = (environment, flag)
            written[key] = written.get(key, 0) + 1
        for (environment, flag), count in written.items():
            flags = self._queued_flags[environment]
            del flags[flag][:count]  # once per flag: one flag may have thousands queued
            if not flags[flag]:
                del flags[flag]

    def _remember(self, change: AppliedChange) -> None:
        log = self._log.get(change.environment)
        if log is None:
            log = self._log[change.environment] = deque(maxlen=self.stream_depth)
        log.append(change)  # the oldest falls out past `stream_depth`

    def _open_db(self) -> Rdict:
        if self._db is None:
            raise RuntimeError("open() the flag table first")
        return self._db

    def _scan(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        for key, value in under(self._open_db(), prefix.encode()):
            yield key.decode(), value


class ChangelogBatch:
    """Consecutive changelog records of one partition, applied together.

    A catch-up reads thousands of records. `add` decides each record against the table as it
    will be once the records before it are in (environment seqs and decided offsets are read
    from the batch itself); `commit` updates the mirror and tells the listeners of each fresh
    change in changelog order. Nothing of the table changes before `commit`.

    What RocksDB gets (one write for the batch: the state and the partition's next offset
    together, `_StateWrite`) is written at `commit`, or, with `defer` (a catch-up, before
    ready), queued on the table and written later (`FlagTable.persist_slice`): serving needs
    only the mirror, and a crash before the write re-reads those records from the last offset
    written, to the same state.
    """

    def __init__(self, table: FlagTable, partition: int) -> None:
        self._table = table
        self._partition = partition
        self._next_offset: int | None = None
        self._added = 0  # records, fences and stale ones too
        self.stale = 0  # changes added that the table already reflected
        self._newest = -math.inf  # the newest produce time of the fresh changes
        # Each environment's seq and each source partition's decided offset as the batch
        # leaves them (the table's for one the batch has not moved).
        self._seqs = _FromTable(table.environment_seq)
        self._decided = _FromTable(table.decided)
        # Each fresh change with what the table reads of it (`Entry`), in changelog order.
        self._entries: list[Entry] = []
        # Each stale change, after how many fresh ones it came (for `heard`).
        self._stale_at: list[tuple[int, AppliedChange]] = []
        self._fresh: list[AppliedChange] = []  # the fresh changes, once committed

    def add(
        self,
        offset: int,
        change: AppliedChange | None,
        raw: bytes | None = None,
        meta: bytes | None = None,
    ) -> bool:
        """Add the record at `offset` (None: it only moves the offset); whether it is fresh.

        `raw` is the record's value as read, `change` read from it (or from `meta`, its meta
        header): stored as they are rather than encoded again.
        """
        self._next_offset = offset + 1
        self._added += 1
        if change is None:
            return False
        environment = change.environment
        fresh = change.seq > self._seqs[environment]
        if fresh:
            self._seqs[environment] = change.seq
            self._entries.append(_entry_of(change, raw, meta))
            self._newest = max(self._newest, change.produced_at)
        else:
            self.stale += 1
            self._stale_at.append((len(self._entries), change))
        # A stale record still decided its command: its writer heard so, and a redelivery of
        # that command must not be decided again.
        source = change.source_partition
        if change.source_offset > self._decided[source]:
            self._decided[source] = change.source_offset
        return fresh

    @property
    def newest_produced(self) -> float | None:
        """The newest produce time of the fresh changes added (None: none)."""
        return None if self._newest == -math.inf else self._newest

    def add_records(
        self,
        records: Sequence[Any],
        start: int,
        read: RecordReader,
        deadline: float,
        *,
        by_header: bool = False,
    ) -> int:
        """`add` each of `records[start:]` (fetched records: `offset`, `value`, `headers`)
        until `deadline` (`time.perf_counter`) has passed, looked at every `CLOCK_EVERY`
        records; one record at least. The index of the first record left.

        `by_header` (no changelog key must vouch for a record first): a record with a binary
        meta header is read by `app.infra.records.read_binary_meta`, its change left
        undecoded: what the decision and the table need comes from that one unpack, not
        from the change. Every other record (a fence, an older or foreign record, a meta
        this worker cannot read, a signed log) is read by `read`.

        `add`'s decision inlined in one loop: a catch-up runs it for every record of the
        changelog, and a call per record (with its attribute lookups) was a fifth of it.
        """
        seqs, decided, entries = self._seqs, self._decided, self._entries
        clock, newest = time.perf_counter, self._newest
        end, count, stale = start, len(records), 0
        while end < count:
            record = records[end]
            end += 1
            fields: MetaFields | None = None
            if by_header:
                for name, meta in record.headers:
                    if name == CHANGE_HEADER:
                        fields = read_binary_meta(meta, record.value)
                        break
            if fields is None:
                fields, meta = _read_whole(record, read)
            if fields is not None:
                change, environment, flag, change_id, seq, version, source, offset, produced = (
                    fields
                )
                if seq > seqs[environment]:
                    seqs[environment] = seq
                    entries.append(
                        (change, record.value, meta, environment, flag, change_id, seq, version)
                    )
                    newest = max(newest, produced)
                else:
                    stale += 1
                    self._stale_at.append((len(entries), change))
                # A stale record still decided its command (as in `add`).
                if offset > decided[source]:
                    decided[source] = offset
            if not end % CLOCK_EVERY and clock() >= deadline:
                break
        self._added += end - start
        self.stale += stale
        self._newest = newest
        self._next_offset = records[end - 1].offset + 1
        return end

    def heard(self) -> Iterator[tuple[list[AppliedChange], bool]]:
        """The changes added, in changelog order, as runs: (changes, whether they were
        fresh). Mostly one run of fresh ones (stale records are rare: a rewritten log)."""
        fresh = self._fresh
        done = 0
        for at, change in self._stale_at:
            if at > done:
                yield fresh[done:at], True
                done = at
            yield [change], False
        if len(fresh) > done:
            yield fresh[done:], True

    def commit(self, fingerprint: str = "", *, defer: bool = False) -> list[AppliedChange]:
        """Write what was added (or queue the write: `defer`, or writes queued before it),
        then update the mirror and tell the listeners; the fresh changes, in changelog order.
        `fingerprint`: of the last record added."""
        if self._next_offset is None:
            return []
        table, partition = self._table, self._partition
        pending = _PendingWrite(
            partition, self._next_offset, fingerprint, self._decided, self._entries, self._added
        )
        queued = defer or bool(table._pending)
        if queued:
            table._queue(pending)
        else:
            _StateWrite(table, pending).write()
        table._positions[partition] = self._next_offset
        table._fingerprints[partition] = fingerprint
        table._decided.update(self._decided)
        table._take_in(self._entries, queued)
        fresh = self._fresh = [entry[0] for entry in self._entries]
        if fresh:
            for many in table._batch_listeners:
                many(fresh)
        listeners = table._listeners
        for change in fresh:
            for listener in listeners:
                listener(change)
        self._next_offset = None
        return fresh


class _FromTable(dict[Any, int]):
    """A batch's values by key (what it moved), the table's for a key it has not moved
    (`table_value`, not stored): one lookup in C per record of a catch-up."""

    def __init__(self, table_value: Callable[[Any], int]) -> None:
        super().__init__()
        self._table_value = table_value

    def __missing__(self, key: Any) -> int:
        return self._table_value(key)


def _read_whole(record: Any, read: RecordReader) -> tuple[MetaFields | None, bytes | None]:
    """What `add_records` reads of a record it does not read by its binary meta: `read`'s
    change (None: a fence, a record refused) and its fields, and the meta it was read from."""
    change, meta = read(record)
    if change is None:
        return None, None
    fields = (
        change,
        change.environment,
        change.flag,
        change.change_id,
        change.seq,
        change.version,
        change.source_partition,
        change.source_offset,
        change.produced_at,
    )
    return fields, meta


def _entry_of(change: AppliedChange, raw: bytes | None, meta: bytes | None) -> Entry:
    """The `Entry` of a change read by its fields (not by a loop's own unpack)."""
    return (
        change,
        raw,
        meta,
        change.environment,
        change.flag,
        change.change_id,
        change.seq,
        change.version,
    )


@dataclass(slots=True)
class _PendingWrite:
    """What one committed batch writes to RocksDB: its fresh changes (value and meta as
    read), the partition's next offset and fingerprint, the decided offsets it moved."""

    partition: int
    next_offset: int
    fingerprint: str
    decided: dict[int, int]
    entries: list[Entry]
    records: int  # records of the changelog it covers (fences and stale ones too)


class _StateWrite:
    """One RocksDB write of a committed batch: each fresh change staged (its history entry,
    pointers to it, change-id entries, trims of what fell out of each window), the `f/` of
    each flag once, the partition's next offset and the decided offsets.

    Writes go in changelog order (the table's queue): the trims read the change-id entries
    the writes before this one left, and this write's own from its batch.
    """

    def __init__(self, table: FlagTable, pending: _PendingWrite) -> None:
        self._table = table
        self._pending = pending
        self._write = WriteBatch(raw_mode=True)
        self._put = self._write.put
        self._delete = self._write.delete
        self._env_keys: dict[str, bytes] = {}  # "{env}/" as bytes, by environment
        # Change-id index keys written by this batch (None: deleted): the trim reads them.
        self._index: dict[bytes, bytes | None] = {}
        # The latest version of each flag this batch changed, by "{env}/{flag}" (bytes): its
        # `f/` entry, written once.
        self._versions: dict[bytes, int] = {}
        # The first and last seq whose `s/` entry this batch trims, by "{env}/" (bytes): the
        # seqs of one environment's fresh changes follow each other, and so do their trims.
        self._stream_trims: dict[bytes, tuple[int, int]] = {}

    def write(self) -> None:
        pending, write = self._pending, self._write
        for entry in pending.entries:
            self._stage(entry)
        write.put(
            f"o/{pending.partition:06d}".encode(),
            f"{pending.next_offset}:{pending.fingerprint}".encode(),
        )
        for flag_key, version in self._versions.items():
            write.put(b"f/" + flag_key, b"%d" % version)
        self._trim_streams()
        for source, offset in pending.decided.items():
            write.put(f"d/{source:06d}".encode(), str(offset).encode())
        self._table._open_db().write(write)

    def _stage(self, entry: Entry) -> None:
        """Stage a fresh change: its value once (the history entry), pointers to it, the
        change-id entries, and the trims of what fell out of each window.

        Once per record of a catch-up: keys are built as bytes (`%`-formatting bytes costs
        half what formatting text and encoding it does) from the environment's cached prefix.
        """
        table, put, delete = self._table, self._put, self._delete
        change, value, meta, env, flag, change_id, seq, version = entry
        if value is None:
            value = dumps(change.to_json())
        if meta is None:
            meta = change_meta(change)
        env_key = self._env_keys.get(env)
        if env_key is None:
            env_key = self._env_keys[env] = env.encode() + b"/"
        flag_key = flag.encode()
        put(b"h/%s%s/%012d" % (env_key, flag_key, version), b"%s\0%s" % (meta, value))
        put(b"s/%s%012d" % (env_key, seq), b"%s/%d" % (flag_key, version))
        self._versions[env_key + flag_key] = version
        if version > table.history_depth:
            delete(b"h/%s%s/%012d" % (env_key, flag_key, version - table.history_depth))
        if seq > table.stream_depth:
            trimmed = seq - table.stream_depth
            span = self._stream_trims.get(env_key)
            self._stream_trims[env_key] = (trimmed, trimmed) if span is None else (span[0], trimmed)
        # The change-id entries, as `_index_put` writes them (inlined: once per record).
        index, id_key = self._index, change_id.encode()
        key = b"c/%s%s" % (env_key, id_key)
        put(key, meta)
        index[key] = meta
        key = b"n/%s%012d" % (env_key, seq)
        put(key, id_key)
        index[key] = id_key
        if seq > table.change_id_depth:
            self._forget_change_id(env_key, seq - table.change_id_depth)

    def _trim_streams(self) -> None:
        """Delete the `s/` entries that fell out of each environment's last `stream_depth`
        changes: one range deletion for a long run of them (a catch-up's write: a point
        deletion per record was a sixth of the memtable's entries), one each for a few."""
        for env_key, (first, last) in self._stream_trims.items():
            if last - first + 1 >= RANGE_TRIM_MIN:
                self._write.delete_range(
                    b"s/%s%012d" % (env_key, first), b"s/%s%012d" % (env_key, last + 1)
                )
            else:
                for seq in range(first, last + 1):
                    self._delete(b"s/%s%012d" % (env_key, seq))

    def _forget_change_id(self, env_key: bytes, seq: int) -> None:
        """Drop the change-id entry of `seq`, `change_id_depth` changes back (`env_key`: the
        environment's key prefix, "{env}/")."""
        old = b"n/%s%012d" % (env_key, seq)
        old_id = self._index_get(old)
        if old_id is None:
            return
        self._index_put(old, None)
        entry = b"c/%s%s" % (env_key, old_id)
        kept = self._index_get(entry)
        # Only a foreign writer reuses a change id; the newer use keeps its entry.
        if kept is not None and _entry(kept).seq == seq:
            self._index_put(entry, None)

    def _index_get(self, key: bytes) -> bytes | None:
        if key in self._index:
            return self._index[key]
        found: bytes | None = self._table._open_db().get(key)
        return found

    def _index_put(self, key: bytes, value: bytes | None) -> None:
        self._index[key] = value
        if value is None:
            self._write.delete(key)
        else:
            self._write.put(key, value)


def _load(value: bytes) -> AppliedChange:
    return AppliedChange.from_json(loads(value))


def _stored(value: bytes) -> AppliedChange:
    """The change a history entry holds: its meta, NUL, the record's value (format 1: the
    change's JSON); the definition parsed when first read."""
    if value[:1] == b"{":
        return _load(value)
    if value[:1] == b"[":  # a JSON meta (format 1) holds no NUL
        meta, _, raw = value.partition(b"\0")
        return routed_change(meta, raw)
    end = meta_length(value)  # a binary meta may hold NULs: its length is in it
    return routed_change(value[:end], value[end + 1 :])


def _entry(value: bytes) -> AppliedChange:
    """The change a change-id entry names, without its definition (format 1: JSON)."""
    if value[:1] == b"{":
        return _load(value)
    return change_from_meta(value)
