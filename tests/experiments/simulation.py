"""A simulated experiment (issue 10 item 8): the raw records of 20,000 subjects, as produced.

`scenario(seed)` builds, deterministically from the seed, what a real run would put on
`exposures` and `metric-events`: the subjects' variants are the engine's own answer for a real
experiment flag (its `fractional` split, compiled and evaluated as flagd does), and every
record is encoded by the producers' own code (`app.experiments.exposures.EXPOSURE`,
`app.experiments.metric_events.METRIC_EVENT`), so the pipeline reads exactly what it would.
One variant has a known lift on both metrics; the rest of the stream is what makes attribution
hard: repeat exposures, crossovers (a subject exposed to a second variant, some of them
*earlier* than the flag's answer, so the first exposure is not the first record), resent
events (same event id), events before the first exposure, on and past the edges of the
attribution window, events of subjects never exposed and of a metric the flag does not
declare, all in shuffled order.

The offline truth of a scenario is `tests.experiments.offline.truth`; the gbstats answers for
the default seed are `tests/experiments/simulation_gbstats.json`.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.experiments import SOURCES
from app.engine import CompiledFlag, compile_flag, evaluate
from app.experiments.exposures import EXPOSURE, Pending
from app.experiments.metric_events import METRIC_EVENT, MetricEvent
from app.experiments.stats import DEFAULT_ALPHA, DEFAULT_SEQUENTIAL_TUNING, MetricKind
from app.infra.records import dumps

# Records by source, named as the attribution names them (a topic's name is per deployment).
EXPOSURES, METRIC_EVENTS = SOURCES

__all__ = ["DEFAULT_SEED", "EXPOSURES", "METRIC_EVENTS", "Scenario", "scenario"]

DEFAULT_SEED = 20261130
ENVIRONMENT = "sim"
FLAG = "sim-checkout"
VARIANTS = ("control", "blue", "green")  # the split's order: control first
WEIGHTS = (34, 33, 33)
LIFTED = "green"  # the one variant with a real effect; blue is an A/A arm against control
CONVERSION_RATE = {"control": 0.10, "blue": 0.10, "green": 0.125}
BASKET_FACTOR = {"control": 1.0, "blue": 1.0, "green": 1.1}  # revenue per purchase
METRICS = {"purchase": MetricKind.CONVERSION, "revenue": MetricKind.MEAN}
UNDECLARED_METRIC = "page_view"  # events the experiment does not read

SUBJECTS = 20_000
NEVER_EXPOSED = 500
START = 1_780_000_000.0  # unix seconds of the first possible exposure (2026-05-28)
EXPOSURE_SPAN_S = 7200.0  # first exposures over two hours: 120 windows of the time series
ATTRIBUTION_WINDOW_S = 3600.0
SERIES_WINDOW_S = 60
PARTITIONS = 8  # FLAGSTREAM_EXPOSURE_PARTITIONS, the default

DEFINITION: dict[str, Any] = {
    "state": "ENABLED",
    "variants": {"control": "one-page", "blue": "blue-button", "green": "two-step"},
    "defaultVariant": "control",
    "targeting": {"fractional": [[v, w] for v, w in zip(VARIANTS, WEIGHTS, strict=True)]},
    "metadata": {
        "experiment": True,
        "metric.purchase": "conversion",
        "metric.revenue": "mean",
    },
}

Record = tuple[bytes, bytes]


@dataclass(frozen=True)
class Scenario:
    """A simulated experiment: the flag it runs, the settings it assumes, its raw records.

    `records[topic]` are (key, value) pairs in the order to produce them, encoded as the
    producers encode them; `noise` counts what of each hard case the records hold.
    """

    seed: int
    environment: str
    flag: str
    definition: dict[str, Any]
    flag_version: int
    variants: tuple[str, ...]
    weights: tuple[float, ...]
    control: str
    lifted: str
    metrics: dict[str, MetricKind]
    attribution_window_s: float
    series_window_s: int
    sequential_tuning: float
    alpha: float
    partitions: int
    records: dict[str, list[Record]]
    noise: Counter[str] = field(default_factory=Counter)

    @property
    def experiment(self) -> str:
        """The experiment's name: the flag key (the flag names no `experimentKey`)."""
        return self.flag

    @property
    def settings(self) -> dict[str, str]:
        """The worker settings the scenario's figures assume (environment variables)."""
        return {
            "FLAGSTREAM_ATTRIBUTION_WINDOW_S": repr(self.attribution_window_s),
            "FLAGSTREAM_SERIES_WINDOW_S": str(self.series_window_s),
            "FLAGSTREAM_SEQUENTIAL_TUNING": repr(self.sequential_tuning),
            "FLAGSTREAM_EXPOSURE_PARTITIONS": str(self.partitions),
        }


class _Builder:
    """Draws one scenario's records from one seeded generator, in a fixed order of draws."""

    def __init__(
        self, seed: int, flag: CompiledFlag, version: int, environment: str, start: float
    ) -> None:
        self.rng = random.Random(seed)
        self.flag = flag
        self.version = version
        self.environment = environment
        self.start = start
        self.exposures: list[Pending] = []
        self.events: list[MetricEvent] = []
        self.noise: Counter[str] = Counter()

    def ident(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def time(self, at: float) -> float:
        """A timestamp to the millisecond, as clients send them."""
        return round(at, 3)

    def expose(self, subject: str, variant: str, at: float) -> None:
        self.exposures.append(
            (self.environment, FLAG, variant, self.version, subject, at, "sdk", self.ident(), FLAG)
        )

    def event(self, subject: str, metric: str, value: float, at: float) -> MetricEvent:
        event = MetricEvent(self.environment, subject, metric, value, at, self.ident())
        self.events.append(event)
        return event

    def assigned(self, subject: str) -> str:
        """The variant flagd's `fractional` gives the subject: the engine's own answer."""
        resolution = evaluate(self.flag, {"targetingKey": subject}, int(self.start))
        if resolution.variant is None:
            raise AssertionError(f"the experiment flag did not resolve: {resolution}")
        return resolution.variant

    def subject(self, index: int) -> None:
        rng = self.rng
        subject = f"user-{index:05d}"
        variant = self.assigned(subject)
        first = self.time(self.start + rng.uniform(0, EXPOSURE_SPAN_S))
        self.expose(subject, variant, first)
        if rng.random() < 0.3:  # came back: repeat exposures, never a new subject
            for _ in range(rng.randint(1, 3)):
                self.expose(subject, variant, self.time(first + rng.uniform(0, 3600)))
                self.noise["repeat exposures"] += 1
        if rng.random() < 0.01:  # shown another variant (a stale SDK): a crossover
            other = rng.choice([v for v in VARIANTS if v != variant])
            earlier = rng.random() < 0.5  # then the other variant is the subject's first
            shift = rng.uniform(1, 600)
            self.expose(subject, other, self.time(first - shift if earlier else first + shift))
            self.noise["crossovers, earlier" if earlier else "crossovers, later"] += 1
        self.behave(subject, variant, first)

    def behave(self, subject: str, variant: str, first: float) -> None:
        """The subject's metric events: purchases at its variant's rate, and the edge cases."""
        rng = self.rng
        if rng.random() < CONVERSION_RATE[variant]:
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                at = self.time(first + rng.uniform(0, ATTRIBUTION_WINDOW_S * 0.9))
                self.event(subject, "purchase", 1.0, at)
                amount = round(rng.lognormvariate(3.0, 0.8) * BASKET_FACTOR[variant], 2)
                self.event(subject, "revenue", amount, at)
        edge = rng.random()
        if edge < 0.02:
            self.event(subject, "purchase", 1.0, self.time(first - rng.uniform(1, 600)))
            self.noise["events before the first exposure"] += 1
        elif edge < 0.04:
            late = self.time(first + ATTRIBUTION_WINDOW_S + rng.uniform(0.001, 3600))
            self.event(subject, "revenue", round(rng.uniform(1, 100), 2), late)
            self.noise["events after the attribution window"] += 1
        elif edge < 0.045:
            self.event(subject, "revenue", 7.5, first)  # at the first exposure: counts
            self.event(subject, "revenue", 2.25, first + ATTRIBUTION_WINDOW_S)  # at the end
            self.noise["events on the window's edges"] += 2
        if rng.random() < 0.05:
            self.event(subject, UNDECLARED_METRIC, 1.0, self.time(first + rng.uniform(0, 60)))
            self.noise["events of an undeclared metric"] += 1

    def strangers(self) -> None:
        """Subjects never exposed: their events count nowhere."""
        for index in range(NEVER_EXPOSED):
            at = self.time(self.start + self.rng.uniform(0, EXPOSURE_SPAN_S))
            self.event(f"stranger-{index:03d}", "purchase", 1.0, at)
            self.event(f"stranger-{index:03d}", "revenue", 20.0, at)
            self.noise["events of subjects never exposed"] += 2

    def resend(self) -> None:
        """Events sent twice with their id (an SDK retry): most identical, a few restamped."""
        rng = self.rng
        for event in rng.sample(self.events, len(self.events) // 30):
            restamped = rng.random() < 0.1
            at = self.time(event.timestamp + rng.uniform(-5, 5)) if restamped else event.timestamp
            self.events.append(event._replace(timestamp=at))
            self.noise["resent events, restamped" if restamped else "resent events"] += 1

    def records(self) -> dict[str, list[Record]]:
        """Both topics' records in shuffled order: timestamps out of order within a topic."""
        self.rng.shuffle(self.exposures)
        self.rng.shuffle(self.events)
        return {
            EXPOSURES: [(EXPOSURE.key_of(e), dumps(EXPOSURE.to_json(e))) for e in self.exposures],
            METRIC_EVENTS: [
                (METRIC_EVENT.key_of(e), dumps(METRIC_EVENT.to_json(e))) for e in self.events
            ],
        }


def compiled(definition: Mapping[str, Any]) -> CompiledFlag:
    flag = compile_flag(FLAG, definition)
    if not isinstance(flag, CompiledFlag):
        raise AssertionError(f"the simulation's flag does not compile: {flag}")
    return flag


def scenario(
    seed: int = DEFAULT_SEED,
    *,
    environment: str = ENVIRONMENT,
    flag_version: int = 1,
    start: float = START,
) -> Scenario:
    """The simulated experiment of `seed`: the same records for the same arguments, every run.

    `environment` is the one the records name (a Kafka test passes its own); `flag_version`
    the version the exposures carry: the one the admin API gives the flag when a Kafka test
    puts it (1 for a new flag); `start` the unix time of the first possible exposure. None of
    them changes a statistic, only the names, versions and timestamps in the records."""
    builder = _Builder(seed, compiled(DEFINITION), flag_version, environment, start)
    for index in range(SUBJECTS):
        builder.subject(index)
    builder.strangers()
    builder.resend()
    records = builder.records()
    return Scenario(
        seed=seed,
        environment=environment,
        flag=FLAG,
        definition=DEFINITION,
        flag_version=flag_version,
        variants=VARIANTS,
        weights=tuple(float(w) for w in WEIGHTS),
        control=VARIANTS[0],
        lifted=LIFTED,
        metrics=dict(METRICS),
        attribution_window_s=ATTRIBUTION_WINDOW_S,
        series_window_s=SERIES_WINDOW_S,
        sequential_tuning=DEFAULT_SEQUENTIAL_TUNING,
        alpha=DEFAULT_ALPHA,
        partitions=PARTITIONS,
        records=records,
        noise=builder.noise,
    )
