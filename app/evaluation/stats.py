"""Evaluation counters and latency histograms, counted locally and exported at scrape time.

A labelled prometheus-client `inc()` costs about 1.3 us, more than an evaluation; a dict
increment costs ~0.1 us. So the hot path counts into plain dicts and a custom collector turns
them into Prometheus families when `/metrics` is scraped. Labels stay bounded: a flag key that
names no flag is counted as `(not found)`, never as what the caller sent.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from app.engine import Resolution

__all__ = ["NOT_FOUND", "EvaluationStats", "Tallies", "Tally"]

NOT_FOUND = "(not found)"
# Seconds; from 50 us (a static flag over Kafka) to 100 ms (a stalled event loop).
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
# Outcomes a `Tallies` keeps (a few per flag version); emptied, after a flush, when full.
TALLY_SIZE: Final = 8192


class LocalHistogram:
    """A histogram that is a list of counts: `observe` is a bisect and two additions."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        buckets, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            buckets.append((bound, float(running)))
        return buckets


class EvaluationStats(Collector):
    """Counts by (path, environment, flag, variant, reason) and latency by path."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str, str, str], int] = {}
        self.latency: dict[str, LocalHistogram] = {}
        self.flushes: list[Callable[[], None]] = []  # folded into `counts` before a scrape

    def count(self, path: str, environment: str, flag: str, variant: str, reason: str) -> None:
        key = (path, environment, flag, variant, reason)
        self.counts[key] = self.counts.get(key, 0) + 1

    def observe(self, path: str, seconds: float) -> None:
        self.histogram(path).observe(seconds)

    def histogram(self, path: str) -> LocalHistogram:
        """The latency histogram of `path`, made on first use: a hot path binds its own
        once and observes into it directly (a dict lookup and a call fewer per request)."""
        histogram = self.latency.get(path)
        if histogram is None:
            histogram = self.latency[path] = LocalHistogram()
        return histogram

    def add(self, labels: tuple[str, str, str, str, str], n: int) -> None:
        """Count `n` evaluations at once (a `Tallies` flush)."""
        self.counts[labels] = self.counts.get(labels, 0) + n

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        for flush in self.flushes:  # counted in place by hot paths: exact at every scrape
            flush()
        evaluations = CounterMetricFamily(
            "flagstream_evaluations",
            "Flag evaluations, by path, environment, flag, variant and reason.",
            labels=["path", "environment", "flag", "variant", "reason"],
        )
        for labels, value in list(self.counts.items()):
            evaluations.add_metric(list(labels), value)
        yield evaluations
        latency = HistogramMetricFamily(
            "flagstream_evaluation_latency_seconds",
            "Time to answer one evaluation request (all its flags), by path.",
            labels=["path"],
        )
        for path, histogram in list(self.latency.items()):
            latency.add_metric([path], histogram.cumulative(), histogram.total)
        yield latency


class Tally:
    """One pre-built outcome of a flag version in one environment: the answer a hot path
    sends for it and how many times it was sent since the last flush."""

    __slots__ = ("answer", "count", "environment", "key", "resolution")

    def __init__(self, environment: str, key: str, resolution: Resolution, answer: Any) -> None:
        self.environment = environment
        self.key = key
        self.resolution = resolution  # held: its id keys the tally, so it is not reused
        self.answer = answer
        self.count = 0


class Tallies:
    """A hot path's counts and answers by outcome, folded into `EvaluationStats` at scrape.

    The engine builds every outcome of a flag version once and hands out the same
    `Resolution` objects (`app.engine.compile`), so a path that answers with bytes encoded
    per outcome (the OFREP fast path) finds the bytes and the count in one lookup by the
    resolution's identity: `tally.count += 1` replaces `EvaluationStats.count`'s label tuple
    and dict update, and the encoding (~1 µs of an answer's CPU together, issue 11).
    Every evaluation is still counted exactly: `EvaluationStats.collect` flushes the tallies
    first, and a full cache (TALLY_SIZE outcomes) is flushed before it is emptied.
    """

    __slots__ = ("_stats", "by_id", "path", "size")

    def __init__(self, stats: EvaluationStats, path: str, size: int = TALLY_SIZE) -> None:
        self._stats = stats
        self.path = path  # the `path` label of what is counted here
        self.size = size
        self.by_id: dict[int, Tally] = {}  # by id(resolution): see `find`
        stats.flushes.append(self.flush)

    def find(self, environment: str, key: str, resolution: Resolution) -> Tally | None:
        """The tally of this outcome, if kept (a hot path inlines this lookup)."""
        tally = self.by_id.get(id(resolution))
        if (
            tally is not None
            and tally.resolution is resolution
            and tally.key == key
            and tally.environment == environment
        ):
            return tally
        return None

    def keep(self, environment: str, key: str, resolution: Resolution, answer: Any) -> Tally:
        """A new tally for a pre-built outcome (never a per-call one: an error's message)."""
        by_id = self.by_id
        if len(by_id) >= self.size:
            self.flush()
            by_id.clear()
        replaced = by_id.get(id(resolution))
        if replaced is not None:  # the same outcome object met under another flag or env
            self._fold(replaced)
        tally = by_id[id(resolution)] = Tally(environment, key, resolution, answer)
        return tally

    def flush(self) -> None:
        """Move every tally's count into the stats' counts."""
        for tally in self.by_id.values():
            if tally.count:
                self._fold(tally)

    def _fold(self, tally: Tally) -> None:
        resolution = tally.resolution
        labels = (self.path, tally.environment, tally.key, resolution.variant or "")
        self._stats.add((*labels, resolution.reason), tally.count)
        tally.count = 0
