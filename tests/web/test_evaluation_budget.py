"""One costly flag cannot stall a worker (issue 8 item 8), checked over OFREP on a real worker.

The costly flag passes validation (its cost depends on the context) and on main took ~6 s
of the event loop per evaluation, during which every other request waited. Now its
evaluation ends with an OFREP error once the engine's work budget is spent, and a plain
flag on the same worker keeps answering meanwhile. The flag that doubles a string in a
``reduce`` (the reproduction) is refused by the admin API with the problem's path.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from typing import Any

from tests.conftest import ADMIN_TOKEN, SDK_KEY, Worker, flag, wait_until
from tests.costly_flags import COSTLY

SINGLE = "/ofrep/v1/evaluate/flags/"


PLAIN = flag(targeting={"if": [{"==": [{"var": "plan"}, "pro"]}, "on", "off"]})
REPRODUCTION = flag(
    targeting={
        "reduce": [
            {"var": "arr"},
            {"cat": [{"var": "accumulator"}, {"var": "accumulator"}]},
            "x",
        ]
    }
)


def _request(worker: Worker, method: str, path: str, body: Any, token: str) -> tuple[int, Any]:
    port = int(worker.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        connection.request(method, path, json.dumps(body).encode(), headers)
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        connection.close()


def _evaluate(worker: Worker, key: str, context: dict[str, Any]) -> tuple[int, Any, float]:
    started = time.perf_counter()
    status, body = _request(worker, "POST", SINGLE + key, {"context": context}, SDK_KEY)
    return status, body, time.perf_counter() - started


def test_a_costly_flag_answers_an_error_promptly_and_others_keep_answering(
    worker: Worker,
) -> None:
    costly, plain = "costly-" + uuid.uuid4().hex[:8], "plain-" + uuid.uuid4().hex[:8]
    worker.admin().put("development", costly, COSTLY)
    worker.admin().put("development", plain, PLAIN)
    wait_until(lambda: _evaluate(worker, plain, {"targetingKey": "u"})[0] == 200)

    answers: list[tuple[int, Any, float]] = []

    def hammer() -> None:
        answers.extend(_evaluate(worker, costly, {"targetingKey": "u", "s": "a"}) for _ in range(3))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    plain_latencies = []
    while any(thread.is_alive() for thread in threads) or len(plain_latencies) < 5:
        status, body, elapsed = _evaluate(worker, plain, {"targetingKey": "u", "plan": "pro"})
        assert (status, body["variant"]) == (200, "on"), body
        plain_latencies.append(elapsed)
    for thread in threads:
        thread.join()

    assert len(answers) == 9
    for status, body, elapsed in answers:
        assert status == 400, body
        assert body["errorCode"] == "GENERAL", body
        assert body["errorDetails"].startswith("evaluation budget exceeded"), body
        assert elapsed < 2.0, elapsed  # ~10-40 ms of work; the margin is for a loaded machine
    assert max(plain_latencies) < 2.0, plain_latencies


def test_the_doubling_reduce_is_refused_by_the_admin_api(worker: Worker) -> None:
    key = "doubling-" + uuid.uuid4().hex[:8]
    status, body = _request(
        worker, "PUT", f"/api/v1/environments/development/flags/{key}", REPRODUCTION, ADMIN_TOKEN
    )
    assert 400 <= status < 500, (status, body)
    problems = json.dumps(body["error"]["problems"])
    assert "$.targeting.reduce[1]" in problems and "accumulator" in problems, body
    assert _evaluate(worker, key, {"targetingKey": "u", "arr": [1]})[0] == 404
