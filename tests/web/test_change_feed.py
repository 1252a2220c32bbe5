"""The change feed as a table's batch listener: each write's changes to the open streams of
their environment, in order."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry

from app.infra.metrics import Metrics
from app.infra.records import AppliedChange, ChangeOp
from app.web.change_feed import ChangeFeed, Subscriber
from tables.flags import FlagTable


def change(seq: int, environment: str) -> AppliedChange:
    return AppliedChange(
        f"c{seq}", environment, "f", ChangeOp.PUT, seq, seq, {}, "me", 1.0, 1.0
    )  # fmt: skip


def test_each_write_reaches_the_streams_of_its_environment_in_order(tmp_path: Path) -> None:
    table = FlagTable(tmp_path, history_depth=3, stream_depth=10, change_id_depth=10)
    table.open()
    feed = ChangeFeed(Metrics(CollectorRegistry()))
    table.listen_batches(feed.publish_all)

    async def run() -> tuple[list[int], list[int]]:
        table.apply(0, 0, change(1, "dev"))  # before any stream: nobody to tell
        dev, prod = Subscriber(), Subscriber()
        feed.subscribe("dev", dev)
        feed.subscribe("prod", prod)
        batch = table.batch(0)
        for offset, applied in enumerate([change(2, "dev"), change(1, "prod"), change(3, "dev")]):
            batch.add(offset + 1, applied)
        batch.commit()
        return (
            [dev.queue.get_nowait().seq for _ in range(dev.queue.qsize())],
            [prod.queue.get_nowait().seq for _ in range(prod.queue.qsize())],
        )

    assert asyncio.run(run()) == ([2, 3], [1])
