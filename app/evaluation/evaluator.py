"""Evaluating flags for a request: the engine, plus the bookkeeping every path shares.

OFREP over HTTP, evaluation requests over Kafka and SDK-side evaluations all come through
here, so each counts evaluations the same way and emits the same exposure for an
experiment flag. The engine stays pure; the clock and the side effects live here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.engine import ErrorCode, Reason, Resolution, evaluate, flag_not_found
from app.evaluation.live_flags import LiveFlag, LiveFlags
from app.evaluation.stats import NOT_FOUND, EvaluationStats
from app.experiments.exposures import ExposureSink, exposure_id
from app.experiments.sources import MAX_TEXT

__all__ = ["Evaluated", "Evaluator", "resolve"]

Evaluated = tuple[str, LiveFlag | None, Resolution]


def resolve(live: LiveFlag | None, key: str, context: Mapping[str, Any], now: float) -> Resolution:
    """The engine's answer for a flag version, with the missing and uncompilable cases."""
    if live is None:
        return flag_not_found(key)
    if live.flag is None:
        return Resolution(None, None, Reason.ERROR, ErrorCode.PARSE_ERROR, live.problems)
    return evaluate(live.flag, context, int(now), key)


class Evaluator:
    """Resolves flags of an environment for a context, counting and emitting exposures."""

    def __init__(self, flags: LiveFlags, exposures: ExposureSink, stats: EvaluationStats) -> None:
        self.flags = flags
        self.exposures = exposures
        self.stats = stats
        # An exposure the attribution would refuse (a targeting key over MAX_TEXT characters)
        # is not produced: counted here, not a dead letter per evaluation there.
        self.unattributable = exposures.outcomes.labels("unattributable")

    def one(
        self, environment: str, key: str, context: Mapping[str, Any], now: float, source: str
    ) -> Evaluated:
        live = self.flags.get(environment, key)
        resolution = resolve(live, key, context, now)
        self._record(environment, key, live, resolution, context, now, source)
        return key, live, resolution

    def resolution(
        self, environment: str, key: str, context: Mapping[str, Any], now: float, source: str
    ) -> Resolution:
        """`one`'s resolution alone, for the OFREP fast path: a compiled flag that is no
        experiment is evaluated and counted here without the calls `one` makes for every
        case (each Python call there is a measurable share of an answer's CPU)."""
        live = self.flags.get(environment, key)
        if live is not None and live.experiment is None and (flag := live.flag) is not None:
            resolution = evaluate(flag, context, int(now), key)
            self.stats.count(source, environment, key, resolution.variant or "", resolution.reason)
            return resolution
        resolution = resolve(live, key, context, now)
        self._record(environment, key, live, resolution, context, now, source)
        return resolution

    def many(
        self,
        environment: str,
        keys: list[str] | None,
        context: Mapping[str, Any],
        now: float,
        source: str,
    ) -> list[Evaluated]:
        """The named flags, or every flag of the environment when `keys` is None."""
        flags = self.flags.environment(environment)
        results = []
        for key in flags if keys is None else keys:
            live = flags.get(key)
            resolution = resolve(live, key, context, now)
            self._record(environment, key, live, resolution, context, now, source)
            results.append((key, live, resolution))
        return results

    def _record(
        self,
        environment: str,
        key: str,
        live: LiveFlag | None,
        resolution: Resolution,
        context: Mapping[str, Any],
        now: float,
        source: str,
    ) -> None:
        variant = resolution.variant
        if live is None:  # labels stay bounded: callers can make up keys and environments
            known = self.flags.table.has_environment(environment)
            self.stats.count(
                source, environment if known else NOT_FOUND, NOT_FOUND, "", resolution.reason
            )
            return
        self.stats.count(source, environment, key, variant or "", resolution.reason)
        if live.experiment is not None and variant is not None:
            targeting_key = context.get("targetingKey")
            if not isinstance(targeting_key, str) or not targeting_key:
                return
            if len(targeting_key) > MAX_TEXT:
                self.unattributable.inc()
            else:
                self.exposures.emit(
                    (
                        environment,
                        key,
                        variant,
                        live.version,
                        targeting_key,
                        now,
                        source,
                        exposure_id(),
                        live.experiment,
                    )
                )
