"""The guardrail watch: rolls an experiment back to its control when a guardrail shows harm.

Every worker runs it. It listens to the experiment-stats feed (every worker's copy of the
partials) and, at most once a second per experiment, checks each changed experiment as the
results view would read it: the live flag version running it, its design, its partials
merged, the always-valid interval of each guardrail metric (app/experiments/guardrails.py).
On a breach it submits the rollback through the ordinary write path (the `Writer`, as the
admin API does), so the change is validated, ordered, kept in history and shown on the change
stream like any other. The change id names the flag version and the metric, so the workers
that all see the breach send one request and the change-id index applies it once; the
`expected_version` keeps a rollback from overwriting a version someone wrote meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final, Protocol

from mode import Service

from app.control.outcomes import Outcome
from app.control.writer import new_change
from app.evaluation.live_flags import LiveFlag, LiveFlags
from app.experiments.design import ExperimentDesign, design_of
from app.experiments.guardrails import (
    Breach,
    actor,
    check,
    guarded,
    rollback_change_id,
    rollback_definition,
    serves_only_control,
)
from app.experiments.partials import Partial
from app.experiments.results import merge
from app.experiments.stats import DEFAULT_ALPHA
from app.infra.metrics import Metrics
from app.infra.records import AppliedChange, ChangeOp, FlagChange, Rejection
from app.infra.settings import Settings

__all__ = ["CHECK_INTERVAL_S", "GuardrailWatch"]

log = logging.getLogger(__name__)

CHECK_INTERVAL_S: Final = 1.0  # an experiment is checked at most this often (partials coalesce)


class ChangeSubmitter(Protocol):
    """What the watch needs of the writer (app.control.writer.Writer)."""

    async def submit(self, change: FlagChange) -> Outcome | None: ...


class PartialsFeed(Protocol):
    """What the watch needs of the experiment-stats feed (app.experiments.stats_feed)."""

    def partials(self, environment: str, experiment: str) -> list[Partial]: ...

    def listen(self, callback: Callable[[str, str], None]) -> None: ...


class GuardrailWatch(Service):
    """Checks the guardrails of each experiment whose partials changed, and rolls back."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        live_flags: LiveFlags,
        writer: ChangeSubmitter,
        feed: PartialsFeed,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.live_flags = live_flags
        self.writer = writer
        self.feed = feed
        self.rollbacks = metrics.guardrail_rollbacks
        # (environment, experiment) whose partials changed since the last check.
        self._changed: set[tuple[str, str]] = set()
        # Set while `_changed` is not empty: an idle watch sleeps instead of waking each second.
        self._pending = asyncio.Event()
        if settings.guardrails:  # FLAGSTREAM_GUARDRAILS=false: nothing is ever checked
            feed.listen(self.changed)

    def changed(self, environment: str, experiment: str) -> None:
        """The feed's listener: note the experiment for the next check (no work here)."""
        self._changed.add((environment, experiment))
        self._pending.set()

    @Service.task
    async def _check_every_interval(self) -> None:
        """Once something changed, wait an interval (partials coalesce), then check."""
        while not self.should_stop:
            await self._pending.wait()
            await self.sleep(CHECK_INTERVAL_S)
            await self.check_changed()

    async def check_changed(self) -> None:
        """Check each experiment noted since the last round, once however often it changed."""
        changed, self._changed = self._changed, set()
        self._pending.clear()
        for environment, experiment in sorted(changed):
            try:
                await self.check(environment, experiment)
            except Exception:  # a bug must not stop the guardrails of other experiments
                log.exception("guardrail check of %s/%s failed", environment, experiment)

    async def check(self, environment: str, experiment: str) -> None:
        """Check every live flag version running the experiment; roll back on a breach."""
        flags = self.live_flags.environment(environment)
        for key in sorted(flags):
            live = flags[key]
            if live.experiment == experiment:
                await self._guard(environment, live)

    async def _guard(self, environment: str, live: LiveFlag) -> None:
        if live.flag is None:
            return
        design = design_of(live.flag, live.version)
        if design is None or not guarded(design) or serves_only_control(live.flag, design):
            return
        partials = self.feed.partials(environment, design.experiment)
        try:
            found = check(
                design,
                merge(partial.totals for partial in partials),
                sequential_tuning=self.settings.sequential_tuning,
            )
        except ValueError as exc:  # totals that fit no declaration (a metric's kind changed)
            log.warning("guardrails of %s/%s not checked: %s", environment, live.key, exc)
            return
        if found:
            await self._roll_back(environment, live, design, found[0])

    async def _roll_back(
        self, environment: str, live: LiveFlag, design: ExperimentDesign, breach: Breach
    ) -> None:
        change_id = rollback_change_id(environment, live.key, live.version, breach.metric)
        table = self.live_flags.table
        current = table.get(environment, live.key)
        if table.applied(environment, change_id) is not None:
            return  # rolled back already; this worker's compiled flag is a moment behind
        if current is None or current.version != live.version or current.definition is None:
            return  # the flag changed since it was compiled: its next check judges the new one
        change = new_change(
            environment,
            live.key,
            ChangeOp.PUT,
            actor(breach, 1 - DEFAULT_ALPHA),
            definition=rollback_definition(current.definition, design, breach),
            expected_version=live.version,
            change_id=change_id,
        )
        log.warning(
            "guardrail: rolling back %s/%s v%d (%s): %s",
            environment,
            live.key,
            live.version,
            change_id,
            change.actor,
        )
        outcome = self._outcome(change, await self.writer.submit(change))
        self.rollbacks.labels(outcome).inc()
        if outcome == "unanswered":  # check again next time, whether partials change or not
            self.changed(environment, design.experiment)

    def _outcome(self, change: FlagChange, outcome: Outcome | None) -> str:
        """The label of `flagstream_guardrail_rollbacks_total` for what the writer heard.

        Every worker that sends the same change id waits for it, so a worker whose own
        request was a duplicate may hear of another's applied change: it is this worker's
        only if it carries this request's actor and produced_at.
        """
        if isinstance(outcome, AppliedChange):
            ours = (outcome.actor, outcome.produced_at) == (change.actor, change.produced_at)
            return "applied" if ours else "already"
        if isinstance(outcome, Rejection):
            log.warning("rollback %s refused: %s", change.change_id, outcome.reason)
            return "refused"
        if self.live_flags.table.applied(change.environment, change.change_id) is not None:
            return "already"  # a duplicate of another worker's: the agent answers nothing
        return "unanswered"
