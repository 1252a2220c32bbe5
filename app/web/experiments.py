"""The experiment views: the experiments of an environment and each one's results.

Read on any worker: the design (variants, control, split, metrics) comes from this worker's
live flags, the figures from the stats feed's newest partials of every source partition
(app/experiments/stats_feed.py), merged when read (app/experiments/report.py). Read tokens and
the admin token may read them, as the admin API's GETs; an SDK key may not (401). Until this
worker's flag table has caught up both answer 503 `NOT_READY`, as the evaluation views do: the
design comes from the flags, and a partial table would call running experiments stopped.
"""

from __future__ import annotations

import time
from typing import Any, Final

from aiohttp import web

from app.evaluation.live_flags import LiveFlag, LiveFlags
from app.experiments.design import ExperimentDesign, design_of
from app.experiments.report import report, summary
from app.experiments.stats_feed import ExperimentStatsFeed
from app.infra.settings import Settings
from app.web.admin_answers import API, check_keys, not_ready
from app.web.auth import Access, Credentials
from app.web.responses import error, ok
from tables.replication import FlagReplication

__all__ = ["ExperimentsApi"]

MAX_EXPERIMENT_KEY: Final = 256  # longer is no experiment name (404 without a lookup)
RUNNING: Final = "running"
STOPPED: Final = "stopped"  # the flag is disabled, or no flag runs the experiment any more
NO_DATA: Final = "no_data"  # running, but no source partition has published totals yet


class ExperimentsApi:
    """`GET …/{env}/experiments` and `GET …/{env}/experiments/{key}/results`."""

    def __init__(
        self,
        settings: Settings,
        credentials: Credentials,
        live_flags: LiveFlags,
        feed: ExperimentStatsFeed,
        replication: FlagReplication,
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        self.live_flags = live_flags
        self.feed = feed
        self.replication = replication

    def routes(self) -> list[web.RouteDef]:
        experiments = API + "/{env}/experiments"
        return [
            web.get(experiments, self.list_experiments),
            web.get(experiments + "/{key}/results", self.results),
        ]

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
