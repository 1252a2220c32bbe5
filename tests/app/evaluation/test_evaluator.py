"""The evaluator emits one exposure per evaluation of an experiment flag with a targeting key,
and none the attribution would refuse (a targeting key over 256 characters): those it counts."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from app.evaluation.evaluator import Evaluator
from app.evaluation.live_flags import LiveFlags
from app.evaluation.stats import EvaluationStats
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
