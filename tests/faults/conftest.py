"""Each fault test gets a broker of its own: it kills, restarts and counts from empty."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.broker import free_port, start_broker, stop
from tests.conftest import Worker


@pytest.fixture
def broker() -> Iterator[str]:
    port = free_port()
    process = start_broker("127.0.0.1", port)
    yield f"127.0.0.1:{port}"
    stop(process)


@pytest.fixture
def cluster() -> Iterator[list[Worker]]:
    """Workers a test appends here are stopped at its end, whatever happened."""
    workers: list[Worker] = []
    yield workers
    for worker in workers:
        worker.stop()
