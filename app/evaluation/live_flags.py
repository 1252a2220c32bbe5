"""The compiled flags a worker evaluates: one `CompiledFlag` per flag version, built once.

Derived from the flag table, and compiled off the request path: every change the table
applies is queued, and a background task compiles the queue a slice of `SLICE_S` at a time,
yielding to the event loop between slices, so thousands of flags (a worker's start, a bulk
import) never hold the loop for more than a slice and one flag.

Ready does not wait for compiling: a worker is ready once its table has caught up with the
changelog (`tables.replication`), which takes about as long as reading it, while compiling
30,000 flags takes several times that. Given `compile_after` (the replication's `ready`),
the background compiler waits for it, so a catch-up does not share its CPU with compiles it
would only delay; it then keeps going after ready. A request for a flag still queued
compiles that one flag (never its environment), so no answer is ever older than the table
and none waits for more than one compile. Past versions (time-travel evaluation) are
compiled on demand, one per request, and kept in a bounded LRU.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum

from app.engine import CompiledFlag, compile_flag
from app.experiments.design import experiment_name
from app.infra.records import AppliedChange
from tables.flags import FlagTable

__all__ = [
    "BEYOND_HISTORY",
    "SLICE_S",
    "BeyondHistory",
    "InvalidListener",
    "LiveFlag",
    "LiveFlags",
]

log = logging.getLogger(__name__)

PAST_VERSIONS_CACHED = 1024
# Compiling time per turn of the event loop: the most a queued compile adds to an answer
# waiting behind it (plus the one flag in hand when the slice ends). 1 ms: the first answers
# after ready have a 5 ms p99 goal, and a turn of the loop costs microseconds.
SLICE_S = 0.001


class BeyondHistory(Enum):
    BEYOND_HISTORY = "beyond history"


BEYOND_HISTORY = BeyondHistory.BEYOND_HISTORY

# Told of a flag version that does not compile (a record no decider validated): the change
# and the problems, e.g. to park it as a dead letter.
InvalidListener = Callable[[AppliedChange, str], None]


@dataclass(frozen=True, slots=True)
class LiveFlag:
    """A compiled flag version, or the problems that kept it from compiling."""

    key: str
    version: int
    flag: CompiledFlag | None
    experiment: str | None  # the experiment's name when the flag is one
    problems: str = ""


def build(change: AppliedChange) -> LiveFlag:
    if change.definition is None:
        raise ValueError(f"{change.flag!r} v{change.version} is a deletion: no flag to build")
    compiled = compile_flag(change.flag, change.definition)
    if isinstance(compiled, list):
        # Not validated on this replica: the decider validated what it wrote, and a record
        # another producer wrote is checked here. `LiveFlags` serves the flag's last valid
        # version instead (PARSE_ERROR, the caller's default, when it has none).
        problems = "; ".join(f"{p.path}: {p.message}" for p in compiled)
        return LiveFlag(change.flag, change.version, None, None, problems)
    return LiveFlag(change.flag, change.version, compiled, experiment_name(compiled))


def build_or_degrade(change: AppliedChange) -> LiveFlag:
    """`build`, with an engine bug degraded to PARSE_ERROR for this flag alone: a compile
    that raises must neither stop the compiler nor lose the flag (it is off the queue)."""
    try:
        return build(change)
    except Exception as exc:
        log.exception("compiling %s/%s v%d failed", change.environment, change.flag, change.version)
        return LiveFlag(change.flag, change.version, None, None, f"compile failed: {exc!r}")


class LiveFlags:
    """Compiled flags by environment and key, current with the table.

    Each live flag of an environment LiveFlags has taken in is in exactly one of two places:
    compiled (its current version) or queued (the change to compile). An environment is
    taken in whole, uncompiled, when first met (a change, a request, `compile_all`).
    """

    def __init__(
        self,
        table: FlagTable,
        *,
        compile_after: asyncio.Event | None = None,
        on_invalid: InvalidListener | None = None,
    ) -> None:
        self.table = table
        self._on_invalid = on_invalid
        self._compiled: dict[str, dict[str, LiveFlag]] = {}
        self._queued: dict[str, dict[str, AppliedChange]] = {}
        self._past: OrderedDict[tuple[str, str, int], LiveFlag] = OrderedDict()
        self._compiler: asyncio.Task[None] | None = None
        self._compile_after = compile_after
        self._frozen = False  # the compiled flags are out of the collector's full walks
        self._heard = 0  # changes the table applied: counted to tell a quiet turn
        # Changes applied while `compile_after` is not set (a catch-up) are not followed one
        # by one: what was taken in is dropped, and every environment is taken in from the
        # table once the gate opens (or when read): one dict per environment instead of a
        # call per change of a 30,000-record catch-up.
        self._stale = False
        table.listen_batches(self._on_changes)

    # -- reads ------------------------------------------------------------------------------

    def get(self, environment: str, key: str) -> LiveFlag | None:
        """The flag's current version, compiled; None when the environment has no such flag."""
        flags = self._compiled.get(environment)
        if flags is None:
            flags = self._take_in(environment)
            if flags is None:
                return None
        live = flags.get(key)
        if live is None:
            return self._compile_queued(environment, key)
        return live

    def environment(self, environment: str) -> Mapping[str, LiveFlag]:
        """Every live flag of an environment, by key (do not mutate).

        While some are still queued, a view that compiles each queued flag when it is read:
        a caller reading a few flags compiles those, not the environment.
        """
        flags = self._compiled.get(environment)
        if flags is None:
            flags = self._take_in(environment)
            if flags is None:
                return {}  # not kept: a made-up name must not cost memory per request
        if environment in self._queued:
            return _Compiling(self, environment)
        return flags

    def queued(self) -> int:
        """How many flag versions are waiting to be compiled."""
        if self._stale:
            self._take_in_all()
        return sum(len(changes) for changes in self._queued.values())

    def etag(self, environment: str) -> str:
        """Changes whenever any flag of the environment changes."""
        return f'"{self.table.environment_seq(environment)}"'

    def at(self, environment: str, key: str, when: float) -> LiveFlag | BeyondHistory | None:
        """The version of a flag that was live at `when` (unix seconds), from its history.

        BEYOND_HISTORY when the table no longer keeps the version that was live then (it
        keeps `FLAGSTREAM_HISTORY_DEPTH` versions; the full history is on `flag-changes`).
        One version is compiled per call at most (the current one is never compiled again).
        """
        history = self.table.history(environment, key)
        if history and history[-1].updated_at > when and history[-1].version > 1:
            return BEYOND_HISTORY
        for change in history:
            if change.updated_at <= when:
                return None if change.deleted else self._past_version(change)
        return None

    # -- compiling --------------------------------------------------------------------------

    async def compile_all(self) -> None:
        """Compile every flag the table holds, a slice per loop turn, and return when none is
        left (for a caller that must not go on before: a script, a test). The worker does
        not await it: its compiler starts after ready and runs to the same end."""
        self._take_in_all()
        while self._queued:
            compiler = self._start_compiler()
            if compiler is not None:
                await asyncio.shield(compiler)
        self._freeze_once()

    async def compiled(self, environment: str) -> Mapping[str, LiveFlag]:
        """`environment()` with none of its flags queued, compiled a slice per loop turn:
        for a caller reading every flag of it (a bulk evaluation) that would otherwise
        compile each queued flag as it reads it, in one turn of the loop."""
        flags = self.environment(environment)
        while environment in self._queued:
            self.compile_slice(environment=environment)
            await asyncio.sleep(0)
            flags = self.environment(environment)
        return flags

    def compile_slice(self, budget_s: float = SLICE_S, environment: str | None = None) -> int:
        """Compile queued flags (of `environment` only, when given) until `budget_s` has
        passed (one at least); how many."""
        deadline = time.perf_counter() + budget_s
        done = 0
        while self._queued:
            if environment is None:
                environment_now, changes = next(iter(self._queued.items()))
            elif environment in self._queued:
                environment_now, changes = environment, self._queued[environment]
            else:
                break
            key, change = changes.popitem()  # newest first: O(1), unlike popping the oldest
            if not changes:
                del self._queued[environment_now]
            self._compiled[environment_now][key] = self._build(change)
            done += 1
            if time.perf_counter() >= deadline:
                break
        return done

    def forget(self) -> None:
        """Drop every compiled flag: the table was rebuilt from another log (a broker that lost
        its data, `tables.replication`), and flags it no longer has must not be served."""
        self._compiled.clear()
        self._queued.clear()
        self._past.clear()
        self._stale = False
        gc.unfreeze()  # what was frozen may be garbage now
        self._frozen = False  # the rebuilt table's flags are frozen when they are compiled

    async def _compile_queue(self) -> None:
        """The background compiler: a slice, then a turn of the loop, until the queue is
        empty. It waits for `compile_after` (the table caught up) first, and skips a turn in
        which the table applied changes: a catch-up or a burst of changes has the loop first
        (what it applies is compiled after it, or by the request that reads it)."""
        started = time.monotonic()
        done = 0
        heard = -1
        try:
            while self._queued or self._stale:
                gate = self._compile_after
                if gate is not None and not gate.is_set():
                    await gate.wait()
                    started = time.monotonic()
                elif self._stale:
                    self._take_in_all()  # the catch-up's flags, from the table
                elif heard != self._heard:
                    heard = self._heard
                    await asyncio.sleep(0)
                else:
                    done += self.compile_slice()
                    if not self._frozen:
                        gc.freeze()  # see `_freeze_once`: the start's flags, as they come
                    await asyncio.sleep(0)
            if not self._frozen:
                log.info(
                    "compiled %d flags of %d environments in %.2fs in the background",
                    done,
                    len(self._compiled),
                    time.monotonic() - started,
                )
            self._freeze_once()
        finally:
            self._compiler = None

    def _freeze_once(self) -> None:
        """Keep the compiled flags out of the collector's full collections, until the
        queue first drains (after a start or a rebuild): each slice's flags are frozen as
        they come, and this marks the end of it.

        They live as long as the worker, and a full collection walks every object the
        collector tracks: with 4,000 flags one took 0.3-0.4 s, a pause in the middle of some
        answer (one of 4.5 s was seen while 30,000 compiled on a loaded machine). Frozen
        (O(1)), the collector leaves them alone. Only until the first drain: a compiled flag
        holds reference cycles, and a frozen one that a later change replaces is never
        collected, so freezing after every change would keep every replaced version; this
        way at most one version per flag of the start is kept (until `forget`), plus what
        cyclic garbage the rest of the worker made while they compiled. Flags compiled
        later stay with the collector, which frees what changes replace.
        """
        if not self._frozen:
            gc.freeze()
            self._frozen = True

    def _start_compiler(self) -> asyncio.Task[None] | None:
        """The background compiler, started if it is not running; None outside an event loop
        (a script or a test applying changes: queued flags are then compiled when read)."""
        if self._compiler is None and (self._queued or self._stale):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return None
            self._compiler = loop.create_task(self._compile_queue(), name="compile flags")
            self._compiler.add_done_callback(_log_crash)
        return self._compiler

    def _compile_queued(self, environment: str, key: str) -> LiveFlag | None:
        """The one queued flag a request asks for, compiled now; None when none is queued."""
        changes = self._queued.get(environment)
        change = None if changes is None else changes.pop(key, None)
        if changes is None or change is None:
            return None
        if not changes:
            del self._queued[environment]
        live = self._compiled[environment][key] = self._build(change)
        return live

    def _build(self, change: AppliedChange) -> LiveFlag:
        """The flag version `change` holds, compiled; when it does not compile, the last
        version of the flag that does, kept serving.

        Replicas do not validate what they apply (the decider did, before writing it): a
        record written straight to the changelog by another producer is checked here, when
        its definition is first parsed and compiled, and never served if invalid. Its flag
        keeps its last valid version (PARSE_ERROR when it has none), and `on_invalid` hears
        of it with the reason.
        """
        live = build_or_degrade(change)
        if live.flag is not None:
            return live
        log.error(
            "%s/%s v%d does not compile (%s): serving its last valid version",
            change.environment,
            change.flag,
            change.version,
            live.problems,
        )
        if self._on_invalid is not None:
            self._on_invalid(change, live.problems)
        return self._last_valid(change) or live

    def _last_valid(self, change: AppliedChange) -> LiveFlag | None:
        """The newest version of the flag before `change` that compiles (history kept), as
        long as the flag existed throughout (a deletion before it ends the search)."""
        for earlier in self.table.history(change.environment, change.flag):
            if earlier.version >= change.version:
                continue
            if earlier.deleted:
                return None
            live = build_or_degrade(earlier)
            if live.flag is not None:
                return live
        return None

    def _past_version(self, change: AppliedChange) -> LiveFlag:
        current = self._compiled.get(change.environment, {}).get(change.flag)
        if current is not None and current.version == change.version:
            return current
        cache_key = (change.environment, change.flag, change.version)
        past = self._past.get(cache_key)
        if past is None:
            past = self._past[cache_key] = build_or_degrade(change)
            if len(self._past) > PAST_VERSIONS_CACHED:
                self._past.popitem(last=False)
        else:
            self._past.move_to_end(cache_key)
        return past

    # -- following the table ----------------------------------------------------------------

    def _take_in(self, environment: str) -> dict[str, LiveFlag] | None:
        """Queue every live flag of an environment the table has; None when it has none."""
        if not self.table.has_environment(environment):
            return None
        self._queued[environment] = self.table.live_flags(environment)
        if not self._queued[environment]:
            del self._queued[environment]
        flags = self._compiled[environment] = {}
        self._start_compiler()
        return flags

    def _take_in_all(self) -> None:
        self._stale = False
        for environment in self.table.environments():
            if environment not in self._compiled:
                self._take_in(environment)

    def _on_changes(self, changes: list[AppliedChange]) -> None:
        """The changes of one table write, in changelog order: each flag's compiled version
        dropped and its new one queued (a deletion's not). Before `compile_after` is set
        (a catch-up) all that was taken in is dropped instead, taken in again from the table
        when the gate opens or a flag is read (the table applied the changes first)."""
        self._heard += len(changes)
        gate = self._compile_after
        if gate is not None and not gate.is_set():
            self._compiled.clear()
            self._queued.clear()
            if not self._stale:
                self._stale = True
                self._start_compiler()  # waits for the gate, then takes the table in
            return
        compiled, queued = self._compiled, self._queued
        for change in changes:
            environment = change.environment
            flags = compiled.get(environment)
            if flags is None:
                # The table applies a change before it tells us: taken in with the rest (and
                # every environment the table loaded from disk with it, to compile them early).
                self._take_in_all()
                continue
            flags.pop(change.flag, None)
            if change.deleted:
                waiting = queued.get(environment)
                if waiting is not None:
                    waiting.pop(change.flag, None)
                    if not waiting:
                        del queued[environment]
                continue
            waiting = queued.get(environment)
            if waiting is None:
                waiting = queued[environment] = {}
            waiting[change.flag] = change
        self._start_compiler()


class _Compiling(Mapping[str, LiveFlag]):
    """An environment some of whose flags are still queued: each compiled when read."""

    def __init__(self, live: LiveFlags, environment: str) -> None:
        self._live = live
        self._environment = environment

    def __getitem__(self, key: str) -> LiveFlag:
        found = self._live.get(self._environment, key)
        if found is None:
            raise KeyError(key)
        return found

    def __iter__(self) -> Iterator[str]:
        # A copy of the keys: reading a queued flag moves it between the two dicts.
        compiled = self._live._compiled.get(self._environment, {})
        queued = self._live._queued.get(self._environment, {})
        return iter([*compiled, *queued])

    def __len__(self) -> int:
        compiled = self._live._compiled.get(self._environment, {})
        return len(compiled) + len(self._live._queued.get(self._environment, {}))


def _log_crash(task: asyncio.Task[None]) -> None:
    """A compile that raises is a bug: say so (the flags stay queued, compiled when read)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("the background flag compiler failed", exc_info=exc)
