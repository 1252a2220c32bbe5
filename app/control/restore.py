"""`flagstream restore`: re-seed an empty cluster from a worker's flag table.

The changelog is the truth and the tables are copies of it, but when the broker loses its
data (the embedded one keeps nothing across a restart) the copies are all that is left: every
worker holds every flag of every environment with its last `FLAGSTREAM_HISTORY_DEPTH`
versions. Restore reads one worker's table and writes each kept version again, oldest first,
as a new change through the admin API: the one write path, so the changes are validated,
numbered and streamed like any other.

* The source is a data dir, read with RocksDB's read-only mode (no byte changed, no lock
  taken). Its worker must be stopped: a running worker may rebuild its table meanwhile (it
  does when it meets an empty broker), so a table still locked by its worker is refused.
* Each restored change says where it came from. Its actor is `restore:<original actor>`
  and its change id (the `Idempotency-Key`) is
  `restore:<original version>:<original updated_at, unix ms>:<original change id>`
  (`sha256:<hex>` in place of an original id that is not printable ASCII, or is long):
  `origin()` reads it back. docs/topics.md documents the marker.
* Change ids depend only on the source's content, so a second run, or a run after a crash
  halfway, is answered "already applied" for every change the first one made (the admin API
  and the flag-change agent both dedupe change ids) and applies only the rest.
* The versions of each flag are written oldest first, one after the other, so they come out
  in the source's order with new version and seq numbers; a flag deleted in the source ends
  deleted. Several flags are written at once (`jobs`); with one job the environment's
  changes keep the source's order too (`seq`), at about half the speed.
* An environment that already has changes of its own is refused (unless `force`): restoring
  into it would interleave two histories. Changes made by an earlier run of this same
  restore are not "its own": that run is resumed.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from app.control.client import AdminClient, AdminError, Reply
from app.engine import JsonObject
from app.infra.records import AppliedChange
from tables.flags import FlagTable

__all__ = ["RestoreError", "origin", "plan", "read_table", "restore", "totals"]

MARKER = "restore:"
MAX_ACTOR = 128  # the admin API keeps the first 128 characters of X-Actor
MAX_PLAIN_ID = 160  # longer original change ids are named by their digest
RETRY_STATUSES = (502, 503, 504)  # not ready, broker away, not applied in time: send again
RETRY_FOR_S = 60.0


class RestoreError(ValueError):
    """Restore cannot start or cannot go on; the message says why (shown by the CLI)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a restored version came from, read back from its change id."""

    version: int
    updated_at: float
    change_id: str


@dataclass(frozen=True, slots=True)
class Step:
    """One kept version of the source, to be written again as a new change."""

    environment: str
    flag: str
    definition: JsonObject | None  # None: a delete
    change_id: str
    actor: str


@dataclass(slots=True)
class Outcome:
    """What a restore of one environment did, step by step."""

    environment: str
    steps: int = 0
    applied: int = 0
    already: int = 0  # made by an earlier run of the same restore
    skipped: int = 0  # a delete of a flag that is not there (its put was refused or not kept)
    refused: list[str] = field(default_factory=list)


# -- the source ----------------------------------------------------------------------------


def table_dir(data_dir: Path) -> Path:
    """The flag table of a worker's data dir (`FLAGSTREAM_DATA_DIR/flags`), or `data_dir`
    itself when it is a table."""
    for candidate in (data_dir / "flags", data_dir):
        if (candidate / "CURRENT").is_file():
            return candidate
    raise RestoreError(f"no flag table in {data_dir} (expected {data_dir / 'flags'})")


def locked(table: Path) -> bool:
    """Whether a process holds the table's RocksDB lock (its worker is running)."""
    try:
        fd = os.open(table / "LOCK", os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


@contextmanager
def read_table(data_dir: Path) -> Iterator[FlagTable]:
    """The flag table of `data_dir`, opened read-only; refused while its worker runs."""
    path = table_dir(data_dir)
    if locked(path):
        raise RestoreError(f"{path} is in use: stop the worker that owns it, then restore")
    table = FlagTable(path, history_depth=1, stream_depth=1, change_id_depth=1)
    try:
        table.open(read_only=True)
    except Exception as exc:  # rocksdict raises a bare Exception for every RocksDB error
        raise RestoreError(f"cannot read the flag table in {path}: {exc}") from None
    try:
        yield table
    finally:
        table.close()


def plan(table: FlagTable, environments: Iterable[str] | None = None) -> dict[str, list[Step]]:
    """The steps that rebuild each environment: its kept versions in their original order.

    A flag whose oldest kept version is a delete starts with nothing to delete: that step is
    left out, so a flag deleted before its kept history began is simply absent.
    """
    wanted = table.environments() if environments is None else list(environments)
    unknown = [env for env in wanted if not table.has_environment(env)]
    if unknown:
        raise RestoreError(f"the table has no environment {', '.join(unknown)}")
    steps: dict[str, list[Step]] = {}
    for env in wanted:
        versions: list[AppliedChange] = []
        for key in table.keys(env):
            kept = table.history(env, key)[::-1]  # oldest first
            while kept and kept[0].deleted:
                kept.pop(0)
            versions += kept
        steps[env] = [step_for(change) for change in sorted(versions, key=lambda c: c.seq)]
    return steps


def step_for(change: AppliedChange) -> Step:
    return Step(
        environment=change.environment,
        flag=change.flag,
        definition=change.definition,
        change_id=restored_change_id(change),
        actor=_printable(MARKER + change.actor)[:MAX_ACTOR],
    )


# -- the marker ------------------------------------------------------------------------------


def restored_change_id(change: AppliedChange) -> str:
    """The change id of `change` restored: derived from the source only, so stable."""
    original = change.change_id
    if len(original) > MAX_PLAIN_ID or _printable(original) != original or " " in original:
        original = "sha256:" + hashlib.sha256(original.encode()).hexdigest()[:32]
    return f"{MARKER}{change.version}:{round(change.updated_at * 1000)}:{original}"


def origin(change_id: str) -> Origin | None:
    """Where a restored change came from, None for a change that was not restored."""
    if not change_id.startswith(MARKER):
        return None
    version, _, rest = change_id.removeprefix(MARKER).partition(":")
    millis, _, original = rest.partition(":")
    if not (version.isascii() and version.isdigit() and millis.isascii() and millis.isdigit()):
        return None
    return Origin(int(version), int(millis) / 1000, original)


def _printable(text: str) -> str:
    """`text` as printable ASCII, which any HTTP header carries unchanged."""
    escaped = text.encode("ascii", "backslashreplace").decode()
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped)


# -- the target ------------------------------------------------------------------------------


def check_target(client: AdminClient, steps: dict[str, list[Step]], *, force: bool) -> None:
    """Refuse environments that already have changes of their own (unless `force`)."""
    seqs = client.environments()
    busy = [
        env
        for env in steps
        if seqs.get(env, 0) and not _resumable(client, env, steps[env], seqs[env])
    ]
    if busy and not force:
        raise RestoreError(
            f"environment(s) {', '.join(busy)} already have changes: restore into an empty "
            "cluster, or pass --force to add the restored versions after theirs"
        )


def _resumable(client: AdminClient, env: str, steps: list[Step], seq: int) -> bool:
    """Whether every change in `env` may be an earlier run's of these steps (a resume): no
    more changes than steps, and the latest version of every flag is one of them."""
    ours = {step.change_id for step in steps}
    return seq <= len(steps) and all(row["change_id"] in ours for row in client.summary(env))


def restore(
    client: AdminClient,
    steps: dict[str, list[Step]],
    *,
    force: bool = False,
    jobs: int = 1,
    say: Callable[[str], None] = print,
) -> list[Outcome]:
    """Write every step; what each environment's steps did.

    `jobs` flags are written at once, each flag's versions in order. With one job the
    environment's changes also keep their order (one change at a time). On the embedded
    broker of a busy 2-core machine: 25-39 versions/s with one job, 60 with 8.
    """
    check_target(client, steps, force=force)
    started_at = client.environments()
    outcomes = {env: Outcome(env, steps=len(env_steps)) for env, env_steps in steps.items()}
    lock = threading.Lock()

    def write(lane: list[Step]) -> None:
        for step in lane:
            reply = _send(client, step)
            with lock:
                _record(
                    outcomes[step.environment], step, reply, started_at.get(step.environment, 0)
                )

    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="restore") as pool:
        list(pool.map(write, lanes(steps, jobs)))  # raises what a lane raised
    for outcome in outcomes.values():
        say(
            f"{outcome.environment}: {outcome.steps} versions: {outcome.applied} restored, "
            f"{outcome.already} already there, {outcome.skipped} skipped, "
            f"{len(outcome.refused)} refused"
        )
        for problem in outcome.refused:
            say(f"  refused: {problem}")
    return list(outcomes.values())


def lanes(steps: dict[str, list[Step]], jobs: int) -> list[list[Step]]:
    """Steps that must be written one after the other: everything for one job, else each
    flag's versions (a flag's next version only after its previous one)."""
    if jobs <= 1:
        return [[step for env_steps in steps.values() for step in env_steps]]
    by_flag: dict[tuple[str, str], list[Step]] = {}
    for env_steps in steps.values():
        for step in env_steps:
            by_flag.setdefault((step.environment, step.flag), []).append(step)
    return list(by_flag.values())


def _send(client: AdminClient, step: Step) -> Reply:
    """The answer to one step, sent again while the cluster says "not now" (same change id:
    a retry never makes a second version)."""
    deadline = time.monotonic() + RETRY_FOR_S
    pause = 0.25
    while True:
        try:
            reply = client.write(
                step.environment,
                step.flag,
                step.definition,
                change_id=step.change_id,
                actor=step.actor,
            )
        except OSError as exc:  # connection refused or reset: the worker restarts
            if time.monotonic() > deadline:
                raise RestoreError(f"the worker does not answer: {exc}") from None
        else:
            if reply.status not in RETRY_STATUSES or time.monotonic() > deadline:
                return reply
        time.sleep(pause)
        pause = min(pause * 2, 2.0)


def _record(outcome: Outcome, step: Step, reply: Reply, started_at: int) -> None:
    if reply.status == 200:
        if int(reply.body["seq"]) <= started_at:
            outcome.already += 1
        else:
            outcome.applied += 1
    elif reply.status == 404 and step.definition is None:
        outcome.skipped += 1
    elif reply.status in (400, 409, 413, 422):
        outcome.refused.append(f"{step.flag} ({step.change_id}): {AdminError(reply)}")
    else:  # 401/403 and what retries did not cure: nothing else would go better
        raise AdminError(reply)


def totals(outcomes: list[Outcome]) -> str:
    """What a whole restore did, in one line."""
    return (
        f"{len(outcomes)} environment(s), {sum(o.steps for o in outcomes)} versions: "
        f"{sum(o.applied for o in outcomes)} restored, "
        f"{sum(o.already for o in outcomes)} already there, "
        f"{sum(o.skipped for o in outcomes)} skipped, "
        f"{sum(len(o.refused) for o in outcomes)} refused"
    )
