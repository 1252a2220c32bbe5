"""The simulated experiment (issue 10 item 8) folded on a real RocksDB equals its offline truth.

20,000 subjects of a 3-variant experiment flag, their records as the producers write them
(tests/experiments/simulation.py), are split into the 8 partitions Kafka's partitioner gives
their keys, decoded as the consumer decodes them, and folded by `PartitionFold` in interleavings
of the two topics, batch sizes, redeliveries and reopenings of the store drawn from a seed. The
partitions' totals, merged, give results (and the results view's JSON, app/experiments/report.py)
whose every figure equals the truth computed from the raw records by tests/experiments/offline.py
(scipy, no pipeline code) and gbstats' answers for the same statistics
(tests/experiments/simulation_gbstats.json). The Kafka run of the same scenario reuses
`scenario`, `truth` and `report_differences`.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from app.experiments.design import ExperimentDesign, design_of
from app.experiments.fold import PartitionFold, Sourced
from app.experiments.partials import Partial
from app.experiments.report import report
from app.experiments.results import ExperimentResults, merge, results
from app.experiments.sources import decode_exposure, decode_metric_event
from app.infra.records import Rejection
from app.infra.topics import partition_of
from tables.partition_state import PartitionState
from tests.experiments.offline import (
    Truth,
    differences,
    gbstats_figures,
    report_differences,
    results_figures,
    sufficient_statistics,
    truth,
    truth_figures,
)
from tests.experiments.simulation import (
    DEFAULT_SEED,
    EXPOSURES,
    METRIC_EVENTS,
    Scenario,
    compiled,
    scenario,
)

GBSTATS = Path(__file__).with_name("simulation_gbstats.json")
REGENERATE = (
    ".venv/bin/python -m tests.experiments.offline | /tmp/gbvenv/bin/python "
    "scripts/gbstats_simulation.py > tests/experiments/simulation_gbstats.json"
)
DECODERS = {EXPOSURES: decode_exposure, METRIC_EVENTS: decode_metric_event}


@pytest.fixture(scope="module")
def sim() -> Scenario:
    return scenario(DEFAULT_SEED)


@pytest.fixture(scope="module")
def offline(sim: Scenario) -> Truth:
    return truth(sim)


@pytest.fixture(scope="module")
def design(sim: Scenario) -> ExperimentDesign:
    found = design_of(compiled(sim.definition), sim.flag_version)
    assert found is not None
    return found


@pytest.fixture(scope="module")
def folded(
    sim: Scenario, design: ExperimentDesign, tmp_path_factory: pytest.TempPathFactory
) -> list[Partial]:
    """The scenario folded once (the slow part), for every comparison below."""
    return fold_all(sim, design, tmp_path_factory.mktemp("fold") / "experiments", seed=1)


def by_partition(sim: Scenario) -> dict[int, dict[str, list[Sourced]]]:
    """Each topic's records in the partition Kafka's partitioner gives their key, at the
    offsets they get there, decoded as the consumer decodes them."""
    partitions: dict[int, dict[str, list[Sourced]]] = {
        p: {topic: [] for topic in sim.records} for p in range(sim.partitions)
    }
    for topic, records in sim.records.items():
        for key, value in records:
            record = DECODERS[topic](value)
            assert not isinstance(record, Rejection), record
            log = partitions[partition_of(key, sim.partitions)][topic]
            log.append(Sourced(topic, len(log), record))
    return partitions


def interleaved(logs: dict[str, list[Sourced]], rng: random.Random) -> list[Sourced]:
    """The two topics of a partition merged in a random order, each in its offset order."""
    cursors = dict.fromkeys(logs, 0)
    merged = []
    while any(cursors[topic] < len(log) for topic, log in logs.items()):
        topic = rng.choice([t for t, log in logs.items() if cursors[t] < len(log)])
        merged.append(logs[topic][cursors[topic]])
        cursors[topic] += 1
    return merged


def fold_all(sim: Scenario, design: ExperimentDesign, path: Path, seed: int) -> list[Partial]:
    """Fold every partition batch by batch, a fifth of the batches starting back at an
    earlier record (a consumer resuming from an older commit), the store reopened now and
    then; each partition's totals at the end, as its owner publishes them."""
    rng = random.Random(seed)
    store = PartitionState(path)
    store.open()
    fold = PartitionFold(
        store,
        lambda env, experiment: design.kinds if experiment == design.experiment else {},
        sim.attribution_window_s,
        sim.series_window_s,
    )
    streams = {p: interleaved(logs, rng) for p, logs in by_partition(sim).items()}
    cursors = dict.fromkeys(streams, 0)
    try:
        while pending := [p for p, stream in streams.items() if cursors[p] < len(stream)]:
            partition = rng.choice(pending)
            end = cursors[partition] + rng.randint(1, 600)
            start = cursors[partition]
            if rng.random() < 0.2:
                start = max(0, start - rng.randint(1, 400))  # redelivered, then new records
            fold.apply(partition, streams[partition][start:end])
            cursors[partition] = min(end, len(streams[partition]))
            if rng.random() < 0.02:
                store.close()
                store.open()
        partials = [
            Partial(
                sim.environment,
                design.experiment,
                p,
                fold.totals(p, sim.environment, design.experiment),
                design.kinds,
                {source: store.offset(p, source) for source in sim.records},
                folded_at=0.0,
            )
            for p in streams
        ]
    finally:
        store.close()
    return partials


def results_of(
    sim: Scenario, design: ExperimentDesign, partials: list[Partial]
) -> ExperimentResults:
    """The partials merged into results, as a results request does."""
    return results(
        merge(partial.totals for partial in partials),
        design.variants,
        design.control,
        design.kinds,
        weights=design.weights,
        alpha=sim.alpha,
        sequential_tuning=sim.sequential_tuning,
    )


def test_the_flag_designs_the_experiment_the_scenario_assumes(
    sim: Scenario, design: ExperimentDesign
) -> None:
    assert (design.experiment, design.variants, design.control, design.weights) == (
        sim.experiment,
        sim.variants,
        sim.control,
        sim.weights,
    )
    assert design.kinds == sim.metrics


def test_the_fold_of_every_partition_equals_the_offline_truth(
    sim: Scenario, design: ExperimentDesign, offline: Truth, folded: list[Partial]
) -> None:
    found = results_figures(results_of(sim, design, folded))
    expected = truth_figures(offline)
    assert differences(expected, found) == []
    assert sorted(found) == sorted(expected)  # no figure the truth does not have


def test_the_results_equal_gbstats_on_the_same_statistics(
    sim: Scenario, design: ExperimentDesign, offline: Truth, folded: list[Partial]
) -> None:
    document = json.loads(GBSTATS.read_text())
    assert document["input"] == sufficient_statistics(sim, offline), (
        f"the simulation changed: make {GBSTATS.name} again with `{REGENERATE}`"
    )
    gbstats = gbstats_figures(document)
    assert differences(gbstats, truth_figures(offline)) == []
    found = results_figures(results_of(sim, design, folded))
    assert differences(gbstats, found) == []


def test_the_scenario_is_the_same_for_a_seed_and_holds_every_hard_case(sim: Scenario) -> None:
    assert scenario(DEFAULT_SEED).records == sim.records
    assert scenario(DEFAULT_SEED + 1).records != sim.records
    hard_cases = {
        "repeat exposures",
        "crossovers, earlier",
        "crossovers, later",
        "resent events",
        "resent events, restamped",
        "events before the first exposure",
        "events after the attribution window",
        "events on the window's edges",
        "events of subjects never exposed",
        "events of an undeclared metric",
    }
    assert {case for case, count in sim.noise.items() if count >= 20} == hard_cases


def test_the_truth_sees_the_known_lift_and_no_sample_ratio_mismatch(
    sim: Scenario, offline: Truth
) -> None:
    """The lifted variant's fixed-horizon and always-valid intervals exclude 0 on both
    metrics, the always-valid one being the wider; the split matches the flag's weights."""
    assert sum(v.subjects for v in offline.variants) == 20_000
    assert all(v.crossovers > 0 for v in offline.variants)
    assert set(offline.ignored) == {
        "subject never exposed",
        "metric not declared",
        "before the first exposure",
        "after the attribution window",
    }
    for metric in offline.metrics:
        (lifted,) = [c for c in metric.comparisons if c.variant == sim.lifted]
        for lift in (lifted.absolute, lifted.relative):
            assert 0 < lift.sequential_ci[0] < lift.ci[0] and lift.ci[1] < lift.sequential_ci[1]
    assert not offline.sample_ratio.mismatch


def test_the_window_edges_decide_figures(sim: Scenario, offline: Truth) -> None:
    """Events sit on the end of the attribution window: a window a millisecond shorter
    changes the truth, so the comparison with the fold would see it."""
    shorter = truth(replace(sim, attribution_window_s=sim.attribution_window_s - 0.001))
    assert differences(truth_figures(offline), truth_figures(shorter)) != []


def test_the_results_document_equals_the_offline_truth(
    sim: Scenario, design: ExperimentDesign, offline: Truth, folded: list[Partial]
) -> None:
    """The JSON of the results view (app/experiments/report.py) from the folded partials."""
    document = report(
        sim.environment,
        sim.experiment,
        design,
        folded,
        {},
        now=0.0,
        partitions=sim.partitions,
        window_s=sim.series_window_s,
        sequential_tuning=sim.sequential_tuning,
        alpha=sim.alpha,
    )
    assert report_differences(offline, document) == []
    assert document["metrics_unavailable"] == []


def test_the_environment_version_and_start_change_no_statistic(
    sim: Scenario, offline: Truth
) -> None:
    """A Kafka test runs the scenario in its own environment, flag version and time: the
    statistics, and so gbstats' file, stay those of the seed."""
    moved = scenario(DEFAULT_SEED, environment="elsewhere", flag_version=3, start=1.9e9 + 0.5)
    assert {json.loads(value)["environment"] for _, value in moved.records[EXPOSURES]} == {
        "elsewhere"
    }
    assert sufficient_statistics(moved, truth(moved)) == sufficient_statistics(sim, offline)


def test_a_resent_exposure_counts_once(
    sim: Scenario, design: ExperimentDesign, tmp_path: Path
) -> None:
    exposures = sim.records[EXPOSURES]
    resent = replace(
        sim, records={**sim.records, EXPOSURES: exposures + random.Random(5).sample(exposures, 300)}
    )
    partials = fold_all(resent, design, tmp_path / "experiments", seed=4)
    found = results_figures(results_of(resent, design, partials))
    assert differences(truth_figures(truth(resent)), found) == []


def test_a_document_without_partials_differs_in_every_figure_without_raising(
    sim: Scenario, design: ExperimentDesign, offline: Truth
) -> None:
    """What a Kafka test polls before the pipeline caught up: every figure missing or
    unequal (its comparisons unavailable), never an exception out of the comparison."""
    document = report(
        sim.environment,
        sim.experiment,
        design,
        [],
        {},
        now=0.0,
        partitions=sim.partitions,
        window_s=sim.series_window_s,
        sequential_tuning=sim.sequential_tuning,
    )
    found = report_differences(offline, document)
    assert "variant/green/subjects: 6596 != 0" in found
    (p_value,) = [d for d in found if d.startswith("metric/revenue/green/relative/p_value:")]
    assert p_value.endswith("!= 'missing'")
