"""`POST /api/v1/metric-events`: what subjects did, for the analysis of experiments.

The SDK key selects the environment. Each event must name a metric that an experiment flag
of the environment declares (`app.experiments.metrics`), a targeting key, and a value that
fits the metric (a conversion's is 1). Bad items are reported by index with JSON paths while
the rest are produced to `metric-events`, answered 202 once the broker has them: the same
envelope and answers as `POST /api/v1/exposures` (`app.web.sdk_batches`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, TypeGuard

from aiohttp import web

from app.evaluation.live_flags import LiveFlags
from app.experiments.metric_events import MetricEvent, event_id
from app.experiments.metrics import Metric, declared_metrics
from app.experiments.record_sink import Channel
from app.infra.metrics import Metrics
from app.infra.settings import Settings
from app.web.auth import Credentials
from app.web.sdk_batches import ItemCheck, Problems, SdkBatches
from tables.replication import FlagReplication

__all__ = ["MAX_ABS_VALUE", "MetricEventsApi", "check_event"]

# A value's square is summed per subject downstream (Σx²): 1e15 keeps it far inside a float
# while allowing any real amount (10 trillion dollars in cents).
MAX_ABS_VALUE: Final = 1e15


def check_event(
    declared: Mapping[str, Metric], environment: str, index: int, item: Any, now: float
) -> MetricEvent | Problems:
    """The event an item describes, or its problems (paths into the request body)."""
    at = f"$.events[{index}]"
    if not isinstance(item, dict):
        return [{"path": at, "message": "must be an object"}]
    check = ItemCheck(at, item)
    targeting_key, name = check.text("targeting_key"), check.text("metric")
    metric = declared.get(name)
    if name and metric is None:
        message = f"no experiment flag of {environment!r} declares the metric {name!r}"
        check.problem("metric", message)
    value = _value(check, metric)
    timestamp = check.timestamp(now)
    ident = check.ident("event_id", event_id)
    if check.problems:
        return check.problems
    return MetricEvent(environment, targeting_key, name, value, timestamp, ident)


def _value(check: ItemCheck, metric: Metric | None) -> float:
    """The event's value: 1 (or true, or absent) for a conversion, else a bounded number."""
    if metric is not None and metric.kind == "conversion":
        value = check.item.get("value", 1)
        if value is True or (_is_number(value) and value == 1):
            return 1.0
        check.problem("value", f"{metric.key!r} is a conversion: its value is 1 (or true)")
        return 0.0
    value = check.item.get("value")
    if not _is_number(value) or not abs(value) <= MAX_ABS_VALUE:
        check.problem("value", f"must be a finite number of at most {MAX_ABS_VALUE:g} in size")
        return 0.0
    return float(value)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


class MetricEventsApi:
    """`POST /api/v1/metric-events`, produced through the metric events' channel."""

    def __init__(
        self,
        settings: Settings,
        credentials: Credentials,
        live_flags: LiveFlags,
        replication: FlagReplication,
        channel: Channel[MetricEvent],
        metrics: Metrics,
    ) -> None:
        self.live_flags = live_flags
        self.batches = SdkBatches(
            settings, credentials, replication, "events", channel, metrics.metric_events
        )
        # environment -> (its ETag when computed, the metrics its experiment flags declare)
        self._declared: dict[str, tuple[str, dict[str, Metric]]] = {}

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/api/v1/metric-events", self.post)]

    def declared(self, environment: str) -> dict[str, Metric]:
        """The metrics the environment's experiment flags declare, recomputed only when a
        flag of the environment changed (its ETag moved)."""
        tag = self.live_flags.etag(environment)
        cached = self._declared.get(environment)
        if cached is None or cached[0] != tag:
            flags = self.live_flags.environment(environment).values()
            metadatas = (live.flag.metadata for live in flags if live.flag is not None)
            cached = self._declared[environment] = (tag, declared_metrics(metadatas))
        return cached[1]

    def check(self, environment: str, index: int, item: Any, now: float) -> MetricEvent | Problems:
        return check_event(self.declared(environment), environment, index, item, now)

    async def post(self, request: web.Request) -> web.Response:
        return await self.batches.post(request, self.check)
