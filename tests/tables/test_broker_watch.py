"""How long a worker has served stale flags, while its broker is gone (tables/broker_watch.py).

`flagstream_flags_stale_seconds` is what the FlagstreamFlagsServedStale alert reads: 0 while the
broker answers, then the seconds since the first unanswered probe.
"""

from __future__ import annotations

from pathlib import Path

from app.infra.broker import free_port, start_broker, stop
from tests.app.infra.test_metrics import value
from tests.conftest import Worker, wait_until


def test_stale_seconds_count_from_the_first_unanswered_probe(tmp_path: Path) -> None:
    port = free_port()
    broker = start_broker("127.0.0.1", port, tmp_path / "broker.log")
    worker = Worker(f"127.0.0.1:{port}", tmp_path / "data", "stale-test").start(120)
    try:
        assert value(worker, "flagstream_flags_stale_seconds") == 0.0
        stop(broker)
        wait_until(lambda: value(worker, "flagstream_broker_reachable") == 0.0, timeout_s=60)
        first = value(worker, "flagstream_flags_stale_seconds")
        assert first is not None and first > 0, first
        wait_until(lambda: (value(worker, "flagstream_flags_stale_seconds") or 0.0) > first)
    finally:
        worker.stop()
        stop(broker)
