"""`flagstream worker --processes 2`: two full workers on one port, watched by a parent.

Each test starts the parent as `flagstream worker` is started in production (a process of
its own), then reaches each child apart through its own metrics port (FLAGSTREAM_METRICS_PORT
+ i), which names the child (`worker_id`) and counts what that child answered.

Each parent's workers form consumer groups of their own (a fresh FLAGSTREAM_APP_ID): the
embedded broker (Tansu 0.6) keeps a departed leader as the leader of a group that is
rebalancing, so when the follower child of one test stopped first and the leader next, the
children of the next test on the module's broker joined a group whose leader was gone, rejoined
every ~8 s and were not ready in 120 s (the CI flake of stop 19, "child p0 not ready").
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli.processes import consecutive_free_ports
from app.infra.broker import free_port, stop
from app.infra.topics import Topics
from tests.conftest import (
    ADMIN_TOKEN,
    REPO,
    SDK_KEY,
    AdminClient,
    flag,
    produce,
    read_topic,
    wait_until,
)

CHILDREN = 2
EVALUATION_PARTITIONS = 8  # the default FLAGSTREAM_EVALUATION_PARTITIONS
START_S = 120  # two workers starting side by side on a loaded 2-core machine


class Parent:
    """`flagstream worker --processes 2` against the test broker, and its children's ports."""

    def __init__(self, broker: str, data_dir: Path) -> None:
        self.broker = broker
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_port = consecutive_free_ports("127.0.0.1", CHILDREN)
        self.data_dir = data_dir
        self.log_path = data_dir.with_suffix(".log")
        app_id = f"flagstream-processes-{uuid.uuid4().hex[:8]}"
        self.topics = Topics.named(app_id)  # the app id is the topic prefix too
        env = {
            **os.environ,
            "FLAGSTREAM_BROKERS": broker,
            # A group of its own: never one whose leader left while it rebalanced (see above).
            "FLAGSTREAM_APP_ID": app_id,
            "FLAGSTREAM_WORKER_ID": "w",
            "FLAGSTREAM_DATA_DIR": str(data_dir),
            "FLAGSTREAM_WEB_PORT": str(self.port),
            "FLAGSTREAM_METRICS_PORT": str(self.metrics_port),
            "FLAGSTREAM_ADMIN_TOKEN": ADMIN_TOKEN,
            "FLAGSTREAM_SDK_KEYS": f"{SDK_KEY}=development",
            "FLAGSTREAM_REBALANCE_TIMEOUT_S": "3",
            "FLAGSTREAM_SESSION_TIMEOUT_S": "6",
            "FLAGSTREAM_HEARTBEAT_S": "1",
            "FLAGSTREAM_FETCH_MAX_WAIT_MS": "10",
            "FLAGSTREAM_PRODUCER_IDEMPOTENCE": "false",
            "FLAGSTREAM_SHUTDOWN_TIMEOUT_S": "15",
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker", "--processes", str(CHILDREN)],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def metrics(self, index: int) -> str:
        url = f"http://127.0.0.1:{self.metrics_port + index}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text: str = response.read().decode()
        return text

    def ready(self, index: int) -> bool:
        try:
            return "flagstream_ready 1.0" in self.metrics(index)
        except OSError:
            return False

    def wait_ready(self) -> None:
        for index in range(CHILDREN):
            try:
                wait_until(lambda i=index: self.alive() and self.ready(i), START_S, 0.25)
            except AssertionError:
                log = self.log_path.read_text(errors="replace")
                raise AssertionError(f"child p{index} not ready:\n{log[-4000:]}") from None

    def alive(self) -> bool:
        assert self.process.poll() is None, self.log_path.read_text(errors="replace")[-4000:]
        return True

    def children(self) -> list[int]:
        """The pids of the parent's children, from /proc."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def evaluate(self, key: str) -> dict[str, object]:
        """One OFREP evaluation on a new connection (the kernel picks the child per connection)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(
                "POST",
                f"/ofrep/v1/evaluate/flags/{key}",
                body=b'{"context": {"targetingKey": "u"}}',
                headers={"Authorization": f"Bearer {SDK_KEY}", "Content-Type": "application/json"},
            )
            response = connection.getresponse()
            body: dict[str, object] = json.loads(response.read())
            assert response.status == 200, body
            return body
        finally:
            connection.close()


def counted(text: str, path: str, key: str, variant: str) -> float:
    """`flagstream_evaluations_total` of one flag and variant on one path, in a scrape."""
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("flagstream_evaluations_total{")
            and f'path="{path}"' in line
            and f'flag="{key}"' in line
            and f'variant="{variant}"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def gone(pid: int) -> bool:
    """Whether `pid` no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return status.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@pytest.fixture
def parent(broker: str, tmp_path: Path) -> Iterator[Parent]:
    started = Parent(broker, tmp_path / "data")
    pids: list[int] = []
    try:
        started.wait_ready()
        pids = started.children()
        yield started
    finally:
        stop(started.process, timeout_s=40)
        for pid in pids:  # a failed test must not leave a child behind
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_two_processes_share_the_port_and_each_is_a_full_replica(parent: Parent) -> None:
    assert len(parent.children()) == CHILDREN
    scrapes = [parent.metrics(i) for i in range(CHILDREN)]
    for index, text in enumerate(scrapes):  # each child is named apart and owns its data dir
        assert f'worker_id="w-p{index}"' in text
        assert (parent.data_dir / f"p{index}" / "flags").is_dir()

    admin = AdminClient(parent.url, ADMIN_TOKEN, actor="pytest")
    admin.put("development", "shared", flag(default="off"))
    admin.put("development", "shared", flag(default="on"))

    # New connections land on both children; both answer with the change.
    def both_answered_on() -> bool:
        assert parent.evaluate("shared")["variant"] in ("on", "off")
        return all(counted(parent.metrics(i), "ofrep", "shared", "on") > 0 for i in (0, 1))

    wait_until(both_answered_on, timeout_s=60, interval_s=0.0)

    # Both are members of the evaluation consumer group: each answers Kafka requests.
    sent: set[str] = set()

    def both_answered_over_kafka() -> bool:
        batch = []
        for i in range(4 * EVALUATION_PARTITIONS):
            request_id = f"r-{uuid.uuid4().hex[:8]}"
            request = {
                "schema": 1,
                "request_id": request_id,
                "environment": "development",
                "flags": ["shared"],
                "context": {"targetingKey": f"k{i}"},
            }
            batch.append((f"k{i}".encode(), json.dumps(request).encode()))
            sent.add(request_id)
        produce(parent.broker, parent.topics.evaluation_requests, batch)
        return all(counted(parent.metrics(i), "kafka", "shared", "on") > 0 for i in (0, 1))

    wait_until(both_answered_over_kafka, timeout_s=90, interval_s=1.0)

    def unanswered() -> set[str]:
        results = read_topic(parent.broker, parent.topics.evaluation_results, EVALUATION_PARTITIONS)
        return sent - {r.get("request_id") for r in results}

    wait_until(lambda: not unanswered(), timeout_s=60, interval_s=1.0)


def test_sigterm_to_the_parent_stops_every_child_cleanly(parent: Parent) -> None:
    pids = parent.children()
    parent.process.send_signal(signal.SIGTERM)
    assert parent.process.wait(timeout=60) == 0, parent.log_path.read_text()[-4000:]
    assert all(gone(pid) for pid in pids)
    log = parent.log_path.read_text(errors="replace")
    assert not re.search(r"exited with -?\d+; stopping the others", log)


def test_a_killed_child_stops_the_others_and_the_parent_exits_1(parent: Parent) -> None:
    victim, survivor = parent.children()
    os.kill(victim, signal.SIGKILL)
    assert parent.process.wait(timeout=60) == 1
    assert gone(survivor)
    assert f"(pid {victim}) exited with -9; stopping the others" in parent.log_path.read_text(
        errors="replace"
    )


def test_the_children_stop_when_the_parent_is_killed(parent: Parent) -> None:
    pids = parent.children()
    parent.process.send_signal(signal.SIGKILL)
    parent.process.wait(timeout=10)
    wait_until(lambda: all(gone(pid) for pid in pids), timeout_s=40, interval_s=0.25)


def test_a_searched_run_of_metrics_ports_is_none_an_outgoing_connection_can_take() -> None:
    """A run of ports found for a worker's processes lies below the ephemeral range: there,
    `bind(0)` gives odd ports and `connect()` even ones, so the second port after a `bind(0)`
    one was the very kind an outgoing connection could hold before the child bound it (the CI
    failure of stop 20: `up`'s p1 exited on "address already in use")."""
    from app.cli.processes import ephemeral_ports

    ephemeral = ephemeral_ports()
    if ephemeral is None:
        pytest.skip("no /proc/sys/net/ipv4/ip_local_port_range (not Linux)")
    low, high = ephemeral
    for _ in range(20):
        first = consecutive_free_ports("127.0.0.1", CHILDREN)
        assert not any(low <= port <= high for port in range(first, first + CHILDREN)), first
