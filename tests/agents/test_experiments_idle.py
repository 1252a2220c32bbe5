"""The attribution's publisher sleeps while nothing changed (issue 11, idle cost).

In one process, the service's own tasks running without Kafka (no producer: `publish` is
counted, not sent): idle, it publishes nothing for longer than a publish interval (it used
to wake ten times a second and publish every interval); a change is published promptly, and
changes close together go out in one publish.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from agents.experiments import ExperimentAttribution
from app.evaluation.live_flags import LiveFlags
from app.infra.metrics import Metrics
from app.infra.settings import Settings
from tables.flags import FlagTable

PUBLISH_MS = 300  # FLAGSTREAM_STATS_PUBLISH_MS for these tests


class NotReady:
    """The replication as the attribution sees it before the flag table caught up: its fold
    loop waits, so only the publisher and the declarations timer run."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()


class CountedAttribution(ExperimentAttribution):
    """The attribution without Kafka: `publish` records when it ran and what was changed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.published: list[tuple[float, dict[int, set[tuple[str, str]]]]] = []

    async def on_start(self) -> None:
        """Nothing to connect to."""

    async def on_stop(self) -> None:
        """Nothing to close."""

    async def publish(self) -> None:
        self.published.append((time.monotonic(), self.changed))
        self.changed = {}


def attribution(path: Path) -> CountedAttribution:
    settings = dataclasses.replace(Settings.from_env(), data_dir=path, stats_publish_ms=PUBLISH_MS)
    table = FlagTable(path / "flags", history_depth=10, stream_depth=10, change_id_depth=100)
    replication: Any = NotReady()
    return CountedAttribution(settings, replication, LiveFlags(table), Metrics(CollectorRegistry()))


async def until(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_an_idle_attribution_publishes_nothing_and_a_change_promptly(tmp_path: Path) -> None:
    async def run() -> None:
        service = attribution(tmp_path)
        await service.start()
        try:
            # Idle for several publish intervals: nothing to say (the old 0.1 s timer
            # published at once and then every interval: seen 4 publishes here).
            await asyncio.sleep(4 * PUBLISH_MS / 1000)  # the idle spell is what is measured
            assert service.published == []
            changed_at = time.monotonic()
            service.note_changed(1, [("dev", "checkout")])
            await until(lambda: len(service.published) == 1)
            at, changed = service.published[0]
            assert changed == {1: {("dev", "checkout")}}
            assert at - changed_at < 1.0  # promptly: no interval had passed since a publish
        finally:
            await service.stop()

    asyncio.run(run())


def test_changes_within_a_publish_interval_go_out_together(tmp_path: Path) -> None:
    async def run() -> None:
        service = attribution(tmp_path)
        await service.start()
        try:
            service.note_changed(0, [("dev", "a")])
            await until(lambda: len(service.published) == 1)
            service.note_changed(0, [("dev", "b")])
            service.note_changed(1, [("dev", "c")])
            await until(lambda: len(service.published) == 2)
            (first, _), (second, changed) = service.published
            assert changed == {0: {("dev", "b")}, 1: {("dev", "c")}}
            assert second - first >= PUBLISH_MS / 1000 * 0.99  # at most once per interval
        finally:
            await service.stop()

    asyncio.run(run())
