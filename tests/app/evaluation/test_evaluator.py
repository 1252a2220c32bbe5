"""The evaluator emits one exposure per evaluation of an experiment flag with a targeting key,
and none the attribution would refuse (a targeting key over 256 characters): those it counts."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from app.engine import Resolution
from app.evaluation.evaluator import Evaluator
from app.evaluation.live_flags import LiveFlags
from app.evaluation.stats import EvaluationStats, Tallies
from app.experiments.exposures import exposure_channel
from app.experiments.sources import MAX_TEXT
from app.infra.metrics import Metrics
from app.infra.records import AppliedChange, ChangeOp
from app.infra.settings import Settings
from tables.flags import FlagTable

EXPERIMENT = {
    "state": "ENABLED",
    "variants": {"a": "a", "b": "b"},
    "defaultVariant": "a",
    "targeting": {"fractional": [["a", 50], ["b", 50]]},
    "metadata": {"experiment": True},
}


def test_a_targeting_key_the_attribution_would_refuse_is_counted_not_emitted(
    tmp_path: Path,
) -> None:
    table = FlagTable(tmp_path, history_depth=10, stream_depth=10, change_id_depth=10)
    table.open()
    change = AppliedChange("c1", "dev", "exp", ChangeOp.PUT, 1, 1, EXPERIMENT, "me", 1.0, 1.0)
    table.apply(0, 1, change)
    registry = CollectorRegistry()
    channel = exposure_channel(Settings.from_env(), Metrics(registry))
    evaluator = Evaluator(LiveFlags(table), channel, EvaluationStats())
    for key in ("k" * MAX_TEXT, "k" * (MAX_TEXT + 1), ""):
        evaluator.one("dev", "exp", {"targetingKey": key}, 2.0, "ofrep")
    assert [pending[4] for pending in channel.buffer] == ["k" * MAX_TEXT]
    counted = registry.get_sample_value("flagstream_exposures_total", {"outcome": "unattributable"})
    assert counted == 1.0
    table.close()


def test_the_fast_paths_answer_counts_each_evaluation_and_exposes_an_experiment(
    tmp_path: Path,
) -> None:
    """`Evaluator.answer` counts a plain flag in its outcome's tally and an experiment (or a
    missing flag) through `one`'s bookkeeping: a scrape shows each evaluation once, and an
    experiment's evaluation still emits its exposure."""
    table = FlagTable(tmp_path, history_depth=10, stream_depth=10, change_id_depth=10)
    table.open()
    plain = {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"}
    for n, (key, definition) in enumerate((("exp", EXPERIMENT), ("plain", plain)), 1):
        change = AppliedChange(f"c{n}", "dev", key, ChangeOp.PUT, n, 1, definition, "me", 1.0, 1.0)
        table.apply(0, n, change)
    registry = CollectorRegistry()
    channel = exposure_channel(Settings.from_env(), Metrics(registry))
    stats = EvaluationStats()
    registry.register(stats)
    evaluator = Evaluator(LiveFlags(table), channel, stats)
    tallies = Tallies(stats, "ofrep")

    def encode(key: str, resolution: Resolution) -> tuple[str, str | None]:
        return key, resolution.variant

    for key in ("plain", "exp", "missing") * 3:
        answer = evaluator.answer("dev", key, {"targetingKey": "u1"}, 2.0, tallies, encode)
        assert answer[0] == key
    assert len(channel.buffer) == 3  # one exposure per evaluation of the experiment

    def counted(flag: str, variant: str, reason: str) -> float | None:
        labels = {"path": "ofrep", "environment": "dev", "flag": flag}
        return registry.get_sample_value(
            "flagstream_evaluations_total", {**labels, "variant": variant, "reason": reason}
        )

    assert counted("plain", "on", "STATIC") == 3
    assert counted("(not found)", "", "ERROR") == 3
    table.close()
