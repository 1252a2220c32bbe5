"""Experiment health on /metrics: subjects per variant, SRM p-value, crossovers, lag.

A custom collector, computed when `/metrics` is scraped from the stats feed's newest partials
(the same merge as the results view, app/experiments/report.py), so nothing is counted twice
and nothing on the record path pays for it. Labels are bounded: per environment at most
`MAX_EXPORTED` experiments (the first by name, so a series does not come and go as counts
move) and at most `MAX_EXPORTED_ENVIRONMENTS` environments; the experiments left out are
counted in `flagstream_experiments_unexported`.

The design of an experiment (its split weights, control) comes from the live flags, which live
above this layer: the composition root passes a lookup (`Designs`), e.g.
`ExperimentsApi.design`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.experiments.design import ExperimentDesign
from app.experiments.partials import Progress
from app.experiments.report import analysis_of, figures
from app.experiments.stats_feed import ExperimentStatsFeed

__all__ = ["MAX_EXPORTED", "MAX_EXPORTED_ENVIRONMENTS", "Designs", "ExperimentHealth"]

MAX_EXPORTED: Final = 20  # experiments exported per environment
MAX_EXPORTED_ENVIRONMENTS: Final = 20  # environments whose experiments are exported

Designs = Callable[[str, str], ExperimentDesign | None]


class ExperimentHealth(Collector):
    """Exports the health figures of the experiments the feed holds partials of."""

    def __init__(
        self,
        feed: ExperimentStatsFeed,
        designs: Designs,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.feed = feed
        self.designs = designs
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["environment", "experiment"]
        subjects = GaugeMetricFamily(
            "flagstream_experiment_subjects",
            "Subjects of an experiment's variant (first exposure in it), all source partitions.",
            labels=[*labels, "variant"],
        )
        srm = GaugeMetricFamily(
            "flagstream_experiment_srm_p_value",
            "Sample-ratio check of an experiment: chi-square p of subjects per variant against "
            "the split (gbstats check_srm); below 0.001 is a mismatch. Absent without a split.",
            labels=labels,
        )
        crossovers = GaugeMetricFamily(
            "flagstream_experiment_crossovers",
            "Subjects of an experiment exposed to more than one variant (kept in their first).",
            labels=labels,
        )
        lag = GaugeMetricFamily(
            "flagstream_experiment_aggregation_lag_seconds",
            "Seconds since the owners of an experiment's source partitions last reported their "
            "progress (the worst of them): how stale its results may be.",
            labels=labels,
        )
        behind = GaugeMetricFamily(
            "flagstream_experiment_source_behind_records",
            "Records of a source partition (exposures + metric events) not yet folded when its "
            "owner last reported.",
            labels=["partition"],
        )
        unexported = GaugeMetricFamily(
            "flagstream_experiments_unexported",
            "Experiments with results that the gauges above leave out (beyond the label bounds).",
        )
        progress = self.feed.progress()
        now = self.clock()
        left_out = 0
        for index, environment in enumerate(self.feed.environments()):
            experiments = self.feed.experiments(environment)
            if index >= MAX_EXPORTED_ENVIRONMENTS:
                left_out += len(experiments)
                continue
            left_out += max(0, len(experiments) - MAX_EXPORTED)
            for experiment in experiments[:MAX_EXPORTED]:
                self._add(environment, experiment, progress, now, subjects, srm, crossovers, lag)
        for partition, reported in sorted(progress.items()):
            behind.add_metric([str(partition)], reported.behind)
        unexported.add_metric([], left_out)
        yield from (subjects, srm, crossovers, lag, behind, unexported)

    def _add(
        self,
        environment: str,
        experiment: str,
        progress: dict[int, Progress],
        now: float,
        subjects: GaugeMetricFamily,
        srm: GaugeMetricFamily,
        crossovers: GaugeMetricFamily,
        lag: GaugeMetricFamily,
    ) -> None:
        partials = self.feed.partials(environment, experiment)
        analysis = analysis_of(self.designs(environment, experiment), partials)
        if not analysis.variants:
            return
        counted = figures(analysis, {})
        names = [environment, experiment]
        for variant in counted.variants:
            subjects.add_metric([*names, variant.variant], variant.subjects)
        crossovers.add_metric(names, sum(v.crossovers for v in counted.variants))
        if counted.sample_ratio is not None:
            srm.add_metric(names, counted.sample_ratio.p_value)
        ages = [now - progress[p.partition].at for p in partials if p.partition in progress]
        if ages:
            lag.add_metric(names, max(0.0, *ages))
