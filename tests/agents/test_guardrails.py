"""The guardrail watch: a harmful treatment is rolled back once, within seconds.

In real workers: two workers on the real broker both watch the experiment; partials showing
harm are produced to `experiment-stats` as the attribution consumer publishes them. The
rollback must appear in history and on the change stream with its actor, reason and figures,
as one version however many workers saw the breach and however many partials repeat it.

In one process: the watch over the real feed (records handed to `take`, as its consumer
does) and a real RocksDB flag table, with a writer that decides each change as the agent
does (app.control.changes.decide) and applies it to the table: what the watch sends, how it
counts the outcome, the off switch and the coalescing of partials.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from agents.guardrails import CHECK_INTERVAL_S, GuardrailWatch
from app.control.changes import decide
from app.control.outcomes import Outcome
from app.evaluation.live_flags import LiveFlags
from app.experiments.attribution import Totals, VariantTotals
from app.experiments.guardrails import ROLLBACK_NOTE_KEY
from app.experiments.partials import Partial, encode_partial
from app.experiments.stats import MetricKind
from app.experiments.stats_feed import ExperimentStatsFeed
from app.infra.metrics import Metrics
from app.infra.records import AppliedChange, ChangeOp, FlagChange, Rejection
from app.infra.settings import Settings
from app.infra.topics import Topics
from tables.flags import FlagTable
from tests.conftest import EventStream, Worker, produce, wait_until

EXPERIMENT = "checkout-latency"
APP_ID = "flagstream-guardrails"  # both workers: one group, one set of topics
TOPICS = Topics.named(APP_ID)
DEFINITION: dict[str, Any] = {
    "state": "ENABLED",
    "variants": {"control": "a", "treatment": "b"},
    "defaultVariant": "treatment",
    "targeting": {"fractional": [["control", 50], ["treatment", 50]]},
    "metadata": {
        "experiment": True,
        "experimentKey": EXPERIMENT,
        "metric.latency_ms": "mean guardrail increase",
        "metric.revenue": "mean",
    },
}
PARTITIONS = (0, 3)  # source partitions the subjects came from


def harmful_partials(environment: str, subjects: int, offset: int) -> list[tuple[bytes, bytes]]:
    """Each source partition's totals: the treatment adds ~8 ms to the control's ~100 ms."""
    rng = np.random.default_rng(offset)
    records = []
    for partition in PARTITIONS:
        totals = Totals()
        for variant, shift in (("control", 0.0), ("treatment", 8.0)):
            latency = rng.normal(100.0 + shift, 10.0, subjects)
            revenue = rng.normal(20.0, 5.0, subjects)
            totals.variants[variant] = VariantTotals(
                subjects=subjects,
                exposures=2 * subjects,
                sums={"latency_ms": float(latency.sum()), "revenue": float(revenue.sum())},
                squares={
                    "latency_ms": float((latency**2).sum()),
                    "revenue": float((revenue**2).sum()),
                },
            )
        metrics = {"latency_ms": MetricKind.MEAN, "revenue": MetricKind.MEAN}
        offsets = {"exposures": offset, "metric-events": offset}
        partial = Partial(environment, EXPERIMENT, partition, totals, metrics, offsets, time.time())
        records.append(encode_partial(partial))
    return records


def send(broker: str, records: list[tuple[bytes, bytes]]) -> None:
    for (key, value), partition in zip(records, PARTITIONS, strict=True):
        produce(broker, TOPICS.experiment_stats, [(key, value)], partition=partition)


def counted(worker: Worker, name: str, **labels: str) -> float:
    """A counter's value in the worker's /metrics (0 when it has not counted yet)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.compile(rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$", re.M)
    match = pattern.search(worker.metrics())
    return float(match.group(1)) if match else 0.0


def rollbacks(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [version for version in history if version["actor"].startswith("guardrail:")]


def test_a_harmful_treatment_is_rolled_back_once_with_its_reason_and_figures(
    broker: str, cluster: list[Worker], tmp_path: Path
) -> None:
    # Appended as each starts, so the fixture stops whatever started.
    cluster.extend(Worker(broker, tmp_path / n, APP_ID).start() for n in "ab")
    first, second = cluster
    env = "env-" + uuid.uuid4().hex[:10]
    first.admin().put(env, "checkout", DEFINITION)

    evidence = time.monotonic()
    send(broker, harmful_partials(env, subjects=400, offset=400))
    history = wait_until(
        lambda: rollbacks(h := second.admin().history(env, "checkout")) and h, timeout_s=30
    )
    delay = time.monotonic() - evidence
    assert delay < 15, f"rolled back {delay:.1f} s after the evidence"
    print(f"rolled back {delay:.2f} s after the partials were produced")

    rolled = history[0]
    assert (rolled["version"], rolled["op"]) == (2, "put")
    assert rolled["change_id"] == f"guardrail:{env}:checkout:1:latency_ms"
    # The reason and the figures: metric, direction, variants, lift, interval, n per arm. The
    # watch may act on the first partition's partial before the second's arrives (the interval
    # is valid at any look): n is 400 or 800 per arm.
    figures = re.fullmatch(
        r"guardrail: latency_ms increase in treatment vs control: lift \+[\d.]+ "
        r"\(\+[\d.]+%\), always-valid 95% interval \[\+[\d.]+, \+[\d.]+\], n (\d+) vs (\d+)",
        rolled["actor"],
    )
    assert figures and figures[1] == figures[2] in ("400", "800"), rolled["actor"]
    definition = rolled["definition"]
    assert definition["defaultVariant"] == "control"
    assert "targeting" not in definition
    assert definition["variants"] == DEFINITION["variants"]
    assert definition["metadata"][ROLLBACK_NOTE_KEY].startswith("version 1 rolled back")
    # Both workers serve the rolled-back definition: everyone gets the control.
    for worker in cluster:
        wait_until(lambda w=worker: w.admin().flag(env, "checkout").body == definition)
    # The change stream shows the same change.
    events = EventStream(f"{first.url}/api/v1/environments/{env}/stream", last_event_id=1)
    try:
        seq, kind, data = events.next()
    finally:
        events.close()
    assert (seq, kind, data["actor"], data["change_id"]) == (
        2,
        "change",
        rolled["actor"],
        rolled["change_id"],
    )

    # More partials showing the same harm: the rolled-back version serves only the control,
    # nothing more to do. Someone puts the experiment back (version 3); with the harm still
    # there, the next partials roll version 3 back: one rollback per harmful version.
    send(broker, harmful_partials(env, subjects=500, offset=500))
    first.admin().put(env, "checkout", DEFINITION, version=2)
    send(broker, harmful_partials(env, subjects=600, offset=600))
    history = wait_until(
        lambda: len(rollbacks(h := first.admin().history(env, "checkout"))) == 2 and h,
        timeout_s=30,
    )
    assert [(v["version"], v["change_id"]) for v in history] == [
        (4, f"guardrail:{env}:checkout:3:latency_ms"),
        (3, history[1]["change_id"]),
        (2, f"guardrail:{env}:checkout:1:latency_ms"),
        (1, history[3]["change_id"]),
    ]
    assert history[1]["actor"] == "pytest"
    # Each rollback was applied by one worker's command, counted once over the workers.
    name = "flagstream_guardrail_rollbacks_total"
    assert sum(counted(w, name, outcome="applied") for w in cluster) == 2


class DecidingWriter:
    """The write path in one process: each change decided as the agent decides it, applied to
    the table as replication applies it (`answered` False: sent, but no outcome came)."""

    def __init__(self, live_flags: LiveFlags) -> None:
        self.table = live_flags.table
        self.sent: list[FlagChange] = []
        self.answered = True
        self.raced = False  # another worker's same request is decided just before this one

    async def submit(self, change: FlagChange) -> Outcome | None:
        self.sent.append(change)
        if not self.answered:
            return None
        if self.raced:
            other = dataclasses.replace(change, actor="guardrail: other figures", produced_at=1.0)
            assert isinstance(self.decide(other), AppliedChange)
        verdict = self.decide(change)
        if verdict is None:  # a duplicate: its writer hears of the change its id made
            return self.table.applied(change.environment, change.change_id)
        return verdict

    def decide(self, change: FlagChange) -> AppliedChange | Rejection | None:
        current = self.table.get(change.environment, change.flag)
        earlier = self.table.applied(change.environment, change.change_id)
        seq = self.table.environment_seq(change.environment)
        verdict = decide(change, current, seq, time.time(), earlier=earlier)
        if isinstance(verdict, AppliedChange):
            self.table.apply(0, seq, verdict)
        return verdict


class Watched:
    """A watch over a real feed and a real flag table holding the experiment flag, v1."""

    def __init__(self, path: Path, *, guardrails: bool = True) -> None:
        settings = dataclasses.replace(Settings.from_env(), guardrails=guardrails)
        self.registry = CollectorRegistry()
        metrics = Metrics(self.registry)
        self.rejected: list[Rejection] = []
        self.feed = ExperimentStatsFeed(settings, metrics, self.reject)
        self.live_flags = LiveFlags(self.table_with_the_flag(path))
        self.writer = DecidingWriter(self.live_flags)
        self.watch = GuardrailWatch(settings, metrics, self.live_flags, self.writer, self.feed)
        self.offset = 0

    @staticmethod
    def table_with_the_flag(path: Path) -> FlagTable:
        table = FlagTable(path, history_depth=10, stream_depth=10, change_id_depth=100)
        table.open()
        first = FlagChange("put-1", "dev", "checkout", ChangeOp.PUT, "pytest", 0.0, DEFINITION)
        applied = decide(first, None, 0, time.time())
        assert isinstance(applied, AppliedChange)
        table.apply(0, 0, applied)
        return table

    async def reject(self, rejection: Rejection, raw: bytes | None, p: int, o: int) -> None:
        self.rejected.append(rejection)

    async def harm(self, subjects: int) -> None:
        """Partials of both source partitions showing harm, read by the feed."""
        self.offset += 1
        for _key, value in harmful_partials("dev", subjects, 100 + self.offset):
            await self.feed.take(value, 0, self.offset)

    def counted(self, outcome: str) -> float:
        value = self.registry.get_sample_value(
            "flagstream_guardrail_rollbacks_total", {"outcome": outcome}
        )
        return value or 0.0

    def versions(self) -> list[int]:
        return [change.version for change in self.live_flags.table.history("dev", "checkout")]


def test_the_watch_sends_one_rollback_for_partials_however_many(tmp_path: Path) -> None:
    async def run() -> None:
        watched = Watched(tmp_path / "flags")
        await watched.harm(300)
        await watched.harm(400)  # two changes before the check: one check, one request
        await watched.watch.check_changed()
        assert len(watched.writer.sent) == 1
        change = watched.writer.sent[0]
        assert (change.change_id, change.op, change.expected_version) == (
            "guardrail:dev:checkout:1:latency_ms",
            ChangeOp.PUT,
            1,
        )
        assert change.actor.startswith("guardrail: latency_ms increase in treatment vs control")
        assert change.actor.endswith("n 800 vs 800")
        assert watched.versions() == [2, 1]
        assert watched.counted("applied") == 1
        # The flag now serves only its control: more harm, nothing more to send.
        await watched.harm(500)
        await watched.watch.check_changed()
        assert len(watched.writer.sent) == 1
        assert watched.versions() == [2, 1]

    asyncio.run(run())


def test_an_unanswered_rollback_is_sent_again_under_the_same_change_id(tmp_path: Path) -> None:
    async def run() -> None:
        watched = Watched(tmp_path / "flags")
        watched.writer.answered = False
        await watched.harm(300)
        await watched.watch.check_changed()
        assert watched.counted("unanswered") == 1
        watched.writer.answered = True
        await watched.watch.check_changed()  # no new partial: checked again all the same
        assert [c.change_id for c in watched.writer.sent] == [
            "guardrail:dev:checkout:1:latency_ms"
        ] * 2
        assert watched.counted("applied") == 1
        assert watched.versions() == [2, 1]

    asyncio.run(run())


def test_a_rollback_another_worker_made_first_is_not_counted_as_this_ones(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        watched = Watched(tmp_path / "flags")
        watched.writer.raced = True
        await watched.harm(300)
        await watched.watch.check_changed()
        assert len(watched.writer.sent) == 1
        assert (watched.counted("applied"), watched.counted("already")) == (0, 1)
        assert watched.versions() == [2, 1]

    asyncio.run(run())


def test_guardrails_off_checks_nothing(tmp_path: Path) -> None:
    async def run() -> None:
        watched = Watched(tmp_path / "flags", guardrails=False)
        await watched.harm(300)
        await watched.watch.check_changed()
        assert watched.writer.sent == []
        assert watched.versions() == [1]

    asyncio.run(run())


def test_an_idle_watch_sleeps_and_checks_a_change_within_an_interval(tmp_path: Path) -> None:
    """No partial, no check: the watch used to wake and check each second for nothing (seen
    2 checks in this idle spell). Harm is still checked after one interval."""

    async def run() -> None:
        watched = Watched(tmp_path / "flags")
        watch = watched.watch
        checks: list[float] = []
        check_changed = watch.check_changed

        async def counted() -> None:
            checks.append(time.monotonic())
            await check_changed()

        watch.check_changed = counted  # type: ignore[method-assign]
        await watch.start()
        try:
            await asyncio.sleep(2.5 * CHECK_INTERVAL_S)  # the idle spell is what is measured
            assert checks == []
            harmed_at = time.monotonic()
            await watched.harm(300)
            deadline = harmed_at + 10
            while not watched.writer.sent:
                assert time.monotonic() < deadline, "no rollback"
                await asyncio.sleep(0.01)
            assert len(checks) == 1 and checks[0] - harmed_at >= CHECK_INTERVAL_S * 0.99
        finally:
            await watch.stop()

    asyncio.run(run())
