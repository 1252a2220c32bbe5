"""Ready does not wait for compiling: a replica of thousands of flags, in process against the
real broker and RocksDB, is ready once its table has caught up; the flags compile in the
background after that, and a request for one not compiled yet compiles that one alone."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from app.engine import evaluate
from app.evaluation.live_flags import LiveFlags
from app.infra.metrics import Metrics
from app.infra.settings import Settings
from tables.flags import FlagTable
from tables.replication import FlagReplication
from tests.app.evaluation.test_live_flags import CompileCount, until
from tests.app.evaluation.test_live_flags_startup import (
    APP_ID,
    CONTEXT,
    ENVIRONMENT,
    FLAGS,
    write_changelog,
)


def value_of(live: LiveFlags, key: str) -> object:
    flag = live.get(ENVIRONMENT, key)
    assert flag is not None and flag.flag is not None, key
    return evaluate(flag.flag, CONTEXT, int(time.time()), key).value


def test_ready_before_compiling_then_each_flag_right_and_compiled_once(
    broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_changelog(broker)
    settings = dataclasses.replace(  # the deployment write_changelog wrote the changelog of
        Settings.from_env(),
        brokers=(broker,),
        app_id=APP_ID,
        topic_prefix=APP_ID,
        data_dir=tmp_path,
        fetch_max_wait_ms=10,
    )
    table = FlagTable(tmp_path / "flags", history_depth=3, stream_depth=100, change_id_depth=100)
    replication = FlagReplication(settings, table, Metrics(CollectorRegistry()))
    live = LiveFlags(table, compile_after=replication.ready)
    compiles = CompileCount(monkeypatch)
    at_ready: list[int] = []

    async def caught_up() -> None:  # the last step before ready is set
        at_ready.extend((compiles.calls, live.queued()))

    replication.before_ready(caught_up)

    async def run() -> None:
        await replication.start()
        try:
            await asyncio.wait_for(replication.ready.wait(), 120)
            compiled_at_ready, queued_at_ready = at_ready
            read_at_ready = compiled_at_ready + queued_at_ready
            assert read_at_ready == FLAGS, "the catch-up read every flag of the changelog"
            assert compiled_at_ready == 0, "the catch-up shared no turn of the loop with compiles"
            before = compiles.calls  # the compiler may have had one slice since ready
            # A request, right after ready, for a flag still queued (the compiler takes the
            # newest first: flag-00042 is among its last).
            assert value_of(live, "flag-00042") == "42-pro"
            assert compiles.calls == before + 1, "a request compiles the one flag it reads"
            await until(lambda: live.queued() == 0, timeout_s=120)
            assert gc.get_freeze_count() > 0, "the compiled flags are kept out of full GCs"
        finally:
            await replication.stop()

    try:
        asyncio.run(run())
    finally:
        gc.unfreeze()  # this test process's objects go back to the collector
    assert compiles.calls == FLAGS, "each flag compiled once"
    assert all(value_of(live, f"flag-{i:05d}") == f"{i}-pro" for i in range(FLAGS))
    assert compiles.calls == FLAGS, "nothing compiled twice"
