"""A worker runs on the event loop FLAGSTREAM_EVENT_LOOP names, and answers on it."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from app.infra.event_loop import use_event_loop
from tests.conftest import SDK_KEY, Worker, flag


def uvloop_loaded(pid: int) -> bool:
    """Whether uvloop's extension is mapped into the process (imported, not just installed)."""
    return "uvloop/loop." in Path(f"/proc/{pid}/maps").read_text()


def evaluate(worker: Worker, key: str) -> dict[str, object]:
    request = urllib.request.Request(
        f"{worker.url}/ofrep/v1/evaluate/flags/{key}",
        data=json.dumps({"context": {"targetingKey": "u1"}}).encode(),
        headers={"Authorization": f"Bearer {SDK_KEY}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, object] = json.loads(response.read())
    return answer


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_worker_runs_and_answers_on_the_loop_it_is_told(
    broker: str, tmp_path: Path, loop: str
) -> None:
    worker = Worker(broker, tmp_path / "data", f"loop-{loop}", FLAGSTREAM_EVENT_LOOP=loop)
    try:
        worker.start()
        assert worker.process is not None
        worker.admin().put("development", f"on-{loop}", flag("on"))
        # The fast path (an asyncio.Protocol) answers single-flag evaluations.
        assert evaluate(worker, f"on-{loop}")["value"] is True
        assert f"flagstream: event loop {loop}" in worker.log_path.read_text()
        assert uvloop_loaded(worker.process.pid) == (loop == "uvloop")
    finally:
        worker.stop()


def test_an_unknown_loop_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="FLAGSTREAM_EVENT_LOOP must be one of uvloop, asyncio"):
        use_event_loop("tokio")
