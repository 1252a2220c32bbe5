"""The compiled flags a worker evaluates: one `CompiledFlag` per flag version, built once.

Derived from the flag table: an environment is compiled on its first evaluation, then kept
current by the table's change listener, so an evaluation is two dict lookups and a call.
Past versions (for time-travel evaluation) are compiled on demand and kept in a small LRU.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

from app.engine import CompiledFlag, compile_flag
from app.experiments.design import experiment_name
from app.infra.records import AppliedChange
from tables.flags import FlagTable

__all__ = ["BEYOND_HISTORY", "BeyondHistory", "LiveFlag", "LiveFlags"]

PAST_VERSIONS_CACHED = 1024


class BeyondHistory(Enum):
    BEYOND_HISTORY = "beyond history"


BEYOND_HISTORY = BeyondHistory.BEYOND_HISTORY


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
        # The agent validated this definition; a compile failure means engine and schema
        # disagree. Serve PARSE_ERROR (the caller's default) rather than crash or go stale.
        problems = "; ".join(f"{p.path}: {p.message}" for p in compiled)
        return LiveFlag(change.flag, change.version, None, None, problems)
    return LiveFlag(change.flag, change.version, compiled, experiment_name(compiled))


class LiveFlags:
    """Compiled flags by environment and key, current with the table."""

    def __init__(self, table: FlagTable) -> None:
        self.table = table
        self._environments: dict[str, dict[str, LiveFlag]] = {}
        self._past: OrderedDict[tuple[str, str, int], LiveFlag] = OrderedDict()
        table.listen(self._on_change)

    def environment(self, environment: str) -> dict[str, LiveFlag]:
        """Every live flag of an environment, by key (do not mutate)."""
        flags = self._environments.get(environment)
        if flags is None:
            if not self.table.has_environment(environment):
                return {}  # not cached: a made-up name must not cost memory per request

            flags = {key: build(c) for key, c in self.table.live_flags(environment).items()}
            self._environments[environment] = flags
        return flags

    def get(self, environment: str, key: str) -> LiveFlag | None:
        return self.environment(environment).get(key)

    def etag(self, environment: str) -> str:
        """Changes whenever any flag of the environment changes."""
        return f'"{self.table.environment_seq(environment)}"'

    def at(self, environment: str, key: str, when: float) -> LiveFlag | BeyondHistory | None:
        """The version of a flag that was live at `when` (unix seconds), from its history.

        BEYOND_HISTORY when the table no longer keeps the version that was live then (it
        keeps `FLAGSTREAM_HISTORY_DEPTH` versions; the full history is on `flag-changes`).
        """
        history = self.table.history(environment, key)
        if history and history[-1].updated_at > when and history[-1].version > 1:
            return BEYOND_HISTORY
        for change in history:
            if change.updated_at <= when:
                if change.deleted:
                    return None
                cache_key = (environment, key, change.version)
                past = self._past.get(cache_key)
                if past is None:
                    past = self._past[cache_key] = build(change)
                    if len(self._past) > PAST_VERSIONS_CACHED:
                        self._past.popitem(last=False)
                return past
        return None

    def forget(self) -> None:
        """Drop every compiled flag: the table was rebuilt from another log (a broker that lost
        its data, `tables.replication`), and flags it no longer has must not be served."""
        self._environments.clear()
        self._past.clear()

    def _on_change(self, change: AppliedChange) -> None:
        flags = self._environments.get(change.environment)
        if flags is None:
            return  # compiled on first use
        if change.deleted:
            flags.pop(change.flag, None)
        else:
            flags[change.flag] = build(change)
