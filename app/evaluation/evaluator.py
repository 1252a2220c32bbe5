"""Evaluating flags for a request: the engine, plus the bookkeeping every path shares.

OFREP over HTTP, evaluation requests over Kafka and SDK-side evaluations all come through
here, so each counts evaluations the same way and emits the same exposure for an
experiment flag. The engine stays pure; the clock and the side effects live here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from app.engine import ErrorCode, Reason, Resolution, evaluate, flag_not_found
from app.evaluation.live_flags import LiveFlag, LiveFlags
from app.evaluation.stats import NOT_FOUND, EvaluationStats, Tallies
from app.experiments.exposures import ExposureSink, exposure_id
from app.experiments.sources import MAX_TEXT

__all__ = ["Evaluated", "Evaluator", "resolve"]

Evaluated = tuple[str, LiveFlag | None, Resolution]
Answer = TypeVar("Answer")


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

    def answer(
        self,
        environment: str,
        key: str,
        context: Mapping[str, Any],
        now: float,
        tallies: Tallies,
        encode: Callable[[str, Resolution], Answer],
    ) -> Answer:
        """`one`'s resolution, encoded by `encode` once per pre-built outcome: the OFREP fast
        path's evaluation. A compiled flag that is no experiment is evaluated and counted in
        its outcome's tally (`Tallies`: one lookup finds the count and the answer, where
        `EvaluationStats.count` and an encoding cache cost ~1 µs of an answer's CPU); every
        other case (a missing or uncompilable flag, an experiment's exposure, an error with
        its own message) goes through `one`'s bookkeeping."""
        live = self.flags.get(environment, key)
        if live is not None and live.experiment is None and (flag := live.flag) is not None:
            resolution = flag.static  # `evaluate` inlined: a call fewer per request
            if resolution is None:
                resolution = flag.resolve(context, int(now))
            tally = tallies.by_id.get(id(resolution))  # `Tallies.find`, inlined
            if (
                tally is None
                or tally.resolution is not resolution
                or tally.key != key
                or tally.environment != environment
            ):
                if resolution.error_code is not None:  # built per call: not kept
                    variant = resolution.variant or ""
                    self.stats.count(tallies.path, environment, key, variant, resolution.reason)
                    return encode(key, resolution)
                tally = tallies.keep(environment, key, resolution, encode(key, resolution))
            tally.count += 1
            answer: Answer = tally.answer
            return answer
        resolution = resolve(live, key, context, now)
        self._record(environment, key, live, resolution, context, now, tallies.path)
        return encode(key, resolution)

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
