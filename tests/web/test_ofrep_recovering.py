"""A worker still reading its changelog says so, instead of calling existing flags missing.

The test decides that the worker is recovering: it freezes the broker (SIGSTOP) while the
fresh worker answers HTTP but has not caught up, so the worker cannot catch up until the broker
is thawed. It then knows which answer is right: after `READY_WAIT_S` of waiting, a 500 that
says the worker is recovering; never FLAG_NOT_FOUND, and never a value from an empty table.
"""

from __future__ import annotations

import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.control.client import AdminClient
from app.infra.broker import free_port, start_broker, stop
from tables.replication import READY_WAIT_S
from tests.conftest import ADMIN_TOKEN, SDK_KEY, Worker, flag, wait_until

STARTUP_S = 60.0  # longest a worker process may take to answer HTTP on a loaded machine
EVALUATE = "/ofrep/v1/evaluate/flags/kept"


class FreezableBroker:
    """An embedded broker of this test's own that the test may freeze (SIGSTOP) and thaw."""

    def __init__(self) -> None:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self.process = start_broker("127.0.0.1", port)

    def freeze(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture
def broker() -> Iterator[FreezableBroker]:
    frozen = FreezableBroker()
    yield frozen
    frozen.thaw()  # a frozen process cannot stop
    stop(frozen.process)


def answers_http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1):
            return True
    except OSError:
        return False


def test_an_evaluation_on_a_recovering_worker_says_so_after_its_bounded_wait(
    broker: FreezableBroker, tmp_path: Path
) -> None:
    brokers = broker.address
    first = Worker(brokers, tmp_path / "first", "recovering").start()
    first.admin().put("development", "kept", flag(default="on"))
    first.stop()

    # Its own consumer group: the first worker may have stopped while one of its groups was
    # still forming (its evaluation consumer joins once the table caught up), and Tansu then
    # keeps the departed leader, so a member joining that group later is never assigned and
    # never ready (tests/app/infra/test_broker.py). The table comes from the changelog, which
    # does not depend on the group; the fresh group replays the one command (idempotent).
    fresh = Worker(
        brokers, tmp_path / "fresh", "recovering-fresh", FLAGSTREAM_TOPIC_PREFIX="recovering"
    )
    fresh.launch()
    try:
        # The worker answers HTTP before it reads its changelog, which needs the broker: frozen
        # now, the worker cannot catch up until the thaw.
        wait_until(lambda: answers_http(fresh.url), STARTUP_S)
        broker.freeze()
        admin, sdk = AdminClient(fresh.url, ADMIN_TOKEN), AdminClient(fresh.url, SDK_KEY)
        ready = admin.request("GET", "/readyz")
        assert (ready.status, ready.body["status"]) == (503, "recovering"), ready.body

        started = time.monotonic()
        early = sdk.request("POST", EVALUATE, {"context": {}})
        waited = time.monotonic() - started
        assert (early.status, early.body) == (
            500,
            {"key": "kept", "errorDetails": "the flag table of this worker is still recovering"},
        )
        assert waited >= READY_WAIT_S  # it waited for recovery before saying so
        still = admin.request("GET", "/readyz")  # so no other path can have answered
        assert (still.status, still.body["status"]) == (503, "recovering"), still.body

        broker.thaw()
        fresh.wait_ready(120)
        late = sdk.request("POST", EVALUATE, {"context": {}})
        assert (late.status, late.body["value"]) == (200, True)
    finally:
        broker.thaw()
        fresh.stop()
