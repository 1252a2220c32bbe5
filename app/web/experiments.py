"""The experiment views: the experiments of an environment and each one's results.

Read on any worker: the design (variants, control, split, metrics) comes from this worker's
live flags, the figures from the stats feed's newest partials of every source partition
(app/experiments/stats_feed.py), merged when read (app/experiments/report.py). Read tokens and
the admin token may read them, as the admin API's GETs; an SDK key may not (401). Until this
worker's flag table has caught up both answer 503 `NOT_READY`, as the evaluation views do: the
design comes from the flags, and a partial table would call running experiments stopped.

`GET …/{env}/experiments/{key}/stream` tells an open results page when to read the results
again: a `changed` event at once, after every new partial of the experiment and after every
flag change in its environment (several close together are one event), keepalive comments in
between. It carries no figures, so a client that missed events loses nothing: its next read has
them all. It is bounded like the change stream: a read token, the same per-token and per-worker
caps (`StreamSlots`), and an experiment that exists on this worker, so a made-up name holds
nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from itertools import count
from typing import Any, Final

from aiohttp import web
from prometheus_client import CollectorRegistry

from app.evaluation.live_flags import LiveFlag, LiveFlags
from app.experiments.design import ExperimentDesign, design_of
from app.experiments.report import report, summary
from app.experiments.stats_feed import ExperimentStatsFeed
from app.infra.metrics import Metrics
from app.infra.records import AppliedChange
from app.infra.settings import Settings
from app.web.admin_answers import API, check_keys, not_ready
from app.web.auth import Access, Credentials, bearer
from app.web.change_feed import KEEPALIVE_S, SSE_HEADERS, event
from app.web.responses import error, ok
from app.web.stream import StreamSlots
from tables.replication import FlagReplication

__all__ = ["ExperimentsApi", "ResultSignals"]

MAX_EXPERIMENT_KEY: Final = 256  # longer is no experiment name (404 without a lookup)
RUNNING: Final = "running"
STOPPED: Final = "stopped"  # the flag is disabled, or no flag runs the experiment any more
NO_DATA: Final = "no_data"  # running, but no source partition has published totals yet


class ResultSignals:
    """One flag per open results stream, raised when its experiment gets a new partial."""

    def __init__(self) -> None:
        self.waiting: dict[tuple[str, str], set[asyncio.Event]] = {}

    def tell(self, environment: str, experiment: str) -> None:
        """An `ExperimentStatsFeed` listener: wake the streams of this experiment."""
        for signal in self.waiting.get((environment, experiment), ()):
            signal.set()

    def tell_environment(self, environment: str) -> None:
        """Wake the streams of every experiment of `environment`."""
        for (env, _), signals in self.waiting.items():
            if env == environment:
                for signal in signals:
                    signal.set()

    @asynccontextmanager
    async def watching(self, environment: str, experiment: str) -> AsyncIterator[asyncio.Event]:
        """A signal for one stream; the experiment's set goes with its last stream."""
        key = (environment, experiment)
        signal = asyncio.Event()
        self.waiting.setdefault(key, set()).add(signal)
        try:
            yield signal
        finally:
            group = self.waiting.get(key)
            if group is not None:
                group.discard(signal)
                if not group:
                    del self.waiting[key]


class ExperimentsApi:
    """`GET …/{env}/experiments`, `GET …/{env}/experiments/{key}/results` and its `/stream`."""

    def __init__(
        self,
        settings: Settings,
        credentials: Credentials,
        live_flags: LiveFlags,
        feed: ExperimentStatsFeed,
        replication: FlagReplication,
        slots: StreamSlots | None = None,
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        self.live_flags = live_flags
        self.feed = feed
        self.replication = replication
        # The change stream's slots (`ChangeStreamApi.slots`), so both kinds of stream share
        # the worker's caps; without them, caps of the same size of its own.
        self.slots = slots or StreamSlots(
            settings.max_streams, settings.max_streams_per_key, Metrics(CollectorRegistry())
        )
        self.signals = ResultSignals()
        feed.listen(self.signals.tell)

    def routes(self) -> list[web.RouteDef]:
        experiments = API + "/{env}/experiments"
        return [
            web.get(experiments, self.list_experiments),
            web.get(experiments + "/{key}/results", self.results),
            web.get(experiments + "/{key}/stream", self.stream),
        ]

    def heard_changes(self, changes: list[AppliedChange]) -> None:
        """A `FlagTable` batch listener: a flag change can stop an experiment or change its
        design (a flag turned off, a guardrail's rollback) with no new figure, so the open
        results streams of its environment are told to read again (flag changes are rare: no
        need to find which experiments the flag ran)."""
        if self.signals.waiting:  # none open during a catch-up
            for environment in {change.environment for change in changes}:
                self.signals.tell_environment(environment)

    def design(self, environment: str, experiment: str) -> ExperimentDesign | None:
        """The design of the live flag that runs `experiment` (an enabled one first, then by
        flag key), or None when no live flag does (an `app.experiments.health.Designs`)."""
        flag = self._flag_of(environment, experiment)
        if flag is None or flag.flag is None:
            return None
        return design_of(flag.flag, flag.version)

    async def list_experiments(self, request: web.Request) -> web.Response:
        env = request.match_info["env"]
        denied = await self._refused(request, env)
        if denied:
            return denied
        running = self._experiment_flags(env)
        names = sorted(set(running) | set(self.feed.experiments(env)))
        entries = [self._entry(env, name, running.get(name, [])) for name in names]
        return ok({"environment": env, "experiments": entries})

    async def results(self, request: web.Request) -> web.Response:
        env, key = request.match_info["env"], request.match_info["key"]
        denied = await self._refused(request, env)
        if denied:
            return denied
        partials = self.feed.partials(env, key) if len(key) <= MAX_EXPERIMENT_KEY else []
        flag = self._flag_of(env, key) if len(key) <= MAX_EXPERIMENT_KEY else None
        if flag is None and not partials:
            return error(404, "EXPERIMENT_NOT_FOUND", f"no experiment {key!r} in {env!r}")
        body = report(
            env,
            key,
            self.design(env, key),
            partials,
            self.feed.progress(),
            now=time.time(),
            partitions=self.settings.exposure_partitions,
            window_s=self.settings.series_window_s,
            sequential_tuning=self.settings.sequential_tuning,
        )
        return ok({**body, "status": self._status(flag, bool(partials))})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        env, key = request.match_info["env"], request.match_info["key"]
        denied = await self._refused(request, env)
        if denied:
            return denied
        if len(key) > MAX_EXPERIMENT_KEY or (
            self._flag_of(env, key) is None and not self.feed.partials(env, key)
        ):
            return error(404, "EXPERIMENT_NOT_FOUND", f"no experiment {key!r} in {env!r}")
        token = bearer(request) or ""
        refused = self.slots.refusal(token)
        if refused:
            return refused
        with self.slots.held(token):
            response = web.StreamResponse(headers=SSE_HEADERS)
            await response.prepare(request)
            async with self.signals.watching(env, key) as signal:
                # The client left, or the worker stops: the stream ends quietly.
                with suppress(ConnectionResetError, asyncio.CancelledError):
                    await self._signal_changes(response, signal, {"environment": env, "key": key})
        return response

    async def _signal_changes(
        self, response: web.StreamResponse, signal: asyncio.Event, about: dict[str, str]
    ) -> None:
        """`changed` at once and on each raised signal, until the stats feed stops."""
        signal.set()  # what changed before this stream opened is news to its client
        stopped = asyncio.ensure_future(self.feed.wait_until_stopped())
        try:
            for number in count(1):
                woken = asyncio.ensure_future(signal.wait())
                done, _ = await asyncio.wait(
                    {woken, stopped}, timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED
                )
                woken.cancel()
                if stopped in done:
                    return
                if woken not in done:
                    await response.write(b": keepalive\n\n")
                    continue
                signal.clear()
                await response.write(event("changed", number, about))
        finally:
            stopped.cancel()

    async def _refused(self, request: web.Request, environment: str) -> web.Response | None:
        """401 without a read token, 400 for an invalid environment key, 503 while the flag
        table recovers; credentials first, so a caller without them learns nothing."""
        denied = self.credentials.refuse(request, Access.READ) or check_keys(environment)
        return denied or await not_ready(self.replication)

    def _entry(self, environment: str, experiment: str, flags: list[LiveFlag]) -> dict[str, Any]:
        flag = _running(flags)
        partials = self.feed.partials(environment, experiment)
        design = None if flag is None or flag.flag is None else design_of(flag.flag, flag.version)
        return {
            "key": experiment,
            "flag": None if flag is None else flag.key,
            "status": self._status(flag, bool(partials)),
            **summary(design, partials),
        }

    def _experiment_flags(self, environment: str) -> dict[str, list[LiveFlag]]:
        """The live flags of the environment that run an experiment, by experiment name."""
        found: dict[str, list[LiveFlag]] = {}
        for _, flag in sorted(self.live_flags.environment(environment).items()):
            if flag.experiment is not None and flag.flag is not None:
                found.setdefault(flag.experiment, []).append(flag)
        return found

    def _flag_of(self, environment: str, experiment: str) -> LiveFlag | None:
        return _running(self._experiment_flags(environment).get(experiment, []))

    @staticmethod
    def _status(flag: LiveFlag | None, has_partials: bool) -> str:
        if flag is None or flag.flag is None or flag.flag.state != "ENABLED":
            return STOPPED
        return RUNNING if has_partials else NO_DATA


def _running(flags: list[LiveFlag]) -> LiveFlag | None:
    """The flag that runs an experiment: the first enabled one by key, else the first."""
    enabled = [f for f in flags if f.flag is not None and f.flag.state == "ENABLED"]
    chosen = enabled or flags
    return chosen[0] if chosen else None
