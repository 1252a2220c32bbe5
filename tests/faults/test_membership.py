"""Workers joining and leaving under steady evaluation load: no request is dropped, and none
waits longer than a stated bound.

OFREP never waits on the consumer group: each worker answers from its own table. A Kafka
evaluation request waits while its partition changes owner; on the settings the tests and
`flagstream up` use (session timeout 6 s, rebalance timeout 3 s, heartbeat 1 s) that is at
most `REBALANCE_WAIT_S`, stated for a loaded 2-core machine.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from app.evaluation.client import EvaluationClient
from tests.conftest import SDK_KEY, Worker, flag, wait_until
from tests.worker_topics import topics_of

REBALANCE_WAIT_S = 20.0  # longest wait of a Kafka request while workers join or leave
OFREP_WAIT_S = 2.0  # longest wait of an OFREP request on a steady worker, on a loaded machine


def kafka_load(
    worker: Worker, done: threading.Event, waits: list[float], errors: list[str]
) -> None:
    async def run() -> None:
        async with EvaluationClient(
            worker.brokers, topics=topics_of(worker), timeout_s=120, fetch_max_wait_ms=10
        ) as client:
            i = 0
            while not done.is_set():
                started = time.monotonic()
                result = await client.evaluate("development", {"targetingKey": f"u{i}"}, ["f"])
                waits.append(time.monotonic() - started)
                if result.error is not None or result.flags["f"].value is not True:
                    errors.append(f"kafka {result}")
                i += 1

    try:
        asyncio.run(run())
    except BaseException as exc:
        errors.append(f"kafka {exc!r}")


def ofrep_load(
    worker: Worker, done: threading.Event, waits: list[float], errors: list[str]
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=30)
    headers = {"Authorization": f"Bearer {SDK_KEY}", "Content-Type": "application/json"}
    i = 0
    try:
        while not done.is_set():
            started = time.monotonic()
            body = json.dumps({"context": {"targetingKey": f"u{i}"}})
            connection.request("POST", "/ofrep/v1/evaluate/flags/f", body, headers)
            response = connection.getresponse()
            answer = json.loads(response.read())
            waits.append(time.monotonic() - started)
            if response.status != 200 or answer.get("value") is not True:
                errors.append(f"ofrep {response.status} {answer}")
            i += 1
    except BaseException as exc:
        errors.append(f"ofrep {exc!r}")
    finally:
        connection.close()


def test_workers_joining_and_leaving_drop_no_evaluation(
    broker: str, cluster: list[Worker], tmp_path: Path
) -> None:
    steady = Worker(broker, tmp_path / "steady", "flagstream-members").start()
    cluster.append(steady)
    steady.admin().put("development", "f", flag(default="on"))
    done = threading.Event()
    kafka_waits: list[float] = []
    ofrep_waits: list[float] = []
    errors: list[str] = []
    loads: list[Callable[[], None]] = [
        lambda: kafka_load(steady, done, kafka_waits, errors),
        lambda: ofrep_load(steady, done, ofrep_waits, errors),
    ]
    threads = [threading.Thread(target=load, daemon=True) for load in loads]
    for thread in threads:
        thread.start()

    def answered(more: int) -> Callable[[], bool]:
        target = len(kafka_waits) + more
        return lambda: len(kafka_waits) >= target or bool(errors)

    try:
        wait_until(answered(20), 60)
        joiner = Worker(broker, tmp_path / "joiner", "flagstream-members").start()
        cluster.append(joiner)
        wait_until(answered(50), 60)
        joiner.stop()  # `steady` stays: a group with a live member never waits on a gone leader
        wait_until(answered(50), 60)
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=150)
    # A load still running holds a request no timeout ended: it is in neither list below.
    assert not [thread for thread in threads if thread.is_alive()]
    assert not errors, errors[:5]
    print(  # the figures the bounds are set against, for `pytest -s`
        f"{len(kafka_waits)} Kafka requests, longest wait {max(kafka_waits):.2f} s; "
        f"{len(ofrep_waits)} OFREP requests, longest wait {max(ofrep_waits) * 1000:.0f} ms"
    )
    assert max(kafka_waits) < REBALANCE_WAIT_S, max(kafka_waits)
    assert max(ofrep_waits) < OFREP_WAIT_S, max(ofrep_waits)
