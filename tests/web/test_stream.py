"""The gap-free change stream: ids are per-environment sequence numbers, resumption is exact."""

from __future__ import annotations

import http.client
import json
import re
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN, READ_TOKEN, EventStream, Worker, flag, wait_until


def stream_url(worker: Worker, env: str) -> str:
    return f"{worker.url}/api/v1/environments/{env}/stream"


def test_a_new_client_gets_a_snapshot_then_every_change(worker: Worker, env: str) -> None:
    admin = worker.admin()
    admin.put(env, "a", flag())
    admin.put(env, "b", flag())
    events = EventStream(stream_url(worker, env), token=READ_TOKEN)
    try:
        seq, kind, data = events.next()
        assert (seq, kind) == (2, "snapshot")
        assert set(data["flags"]) == {"a", "b"}
        admin.set_state(env, "a", "DISABLED")
        admin.delete(env, "b")
        assert events.next()[:2] == (3, "change")
        seq, kind, data = events.next()
        assert (seq, kind, data["op"], data["flag"], data["definition"]) == (
            4,
            "change",
            "delete",
            "b",
            None,
        )
    finally:
        events.close()


def test_resuming_with_last_event_id_gives_exactly_the_missed_changes(
    worker: Worker, env: str
) -> None:
    admin = worker.admin()
    for key in ("a", "b", "c", "d"):
        admin.put(env, key, flag())
    events = EventStream(stream_url(worker, env), last_event_id=1)
    try:
        missed = [events.next() for _ in range(3)]
        assert [(seq, kind, data["flag"]) for seq, kind, data in missed] == [
            (2, "change", "b"),
            (3, "change", "c"),
            (4, "change", "d"),
        ]
        admin.put(env, "e", flag())
        assert events.next()[:2] == (5, "change"), (
            "live changes follow the replayed ones without a gap"
        )
    finally:
        events.close()


def test_a_client_that_is_up_to_date_gets_only_new_changes(worker: Worker, env: str) -> None:
    admin = worker.admin()
    admin.put(env, "a", flag())
    events = EventStream(stream_url(worker, env), last_event_id=1)
    try:
        admin.put(env, "b", flag())
        seq, kind, data = events.next()
        assert (seq, kind, data["flag"]) == (2, "change", "b")
    finally:
        events.close()


# -- bad input, unknown environments, caps -------------------------------------------------


def open_stream(
    url: str, token: str = ADMIN_TOKEN, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """The status of a stream request and its JSON body when refused (a 200 is closed at once)."""
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        connection.request(
            "GET",
            parsed.path + (f"?{parsed.query}" if parsed.query else ""),
            headers={"Authorization": f"Bearer {token}"}
            | {
                name: value.encode() for name, value in (headers or {}).items()
            },  # UTF-8 on the wire, as a browser sends it
        )
        response = connection.getresponse()
        if response.status == 200:
            return 200, {}
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def metric(worker: Worker, pattern: str) -> float | None:
    found = re.search(f"^{pattern} (\\S+)$", worker.metrics(), re.MULTILINE)
    return float(found.group(1)) if found else None


@pytest.mark.parametrize("value", ["²", "abc", "-1", "1.5", "9" * 5000])
def test_a_last_event_id_that_is_not_a_change_id_is_a_400_before_the_stream(
    worker: Worker, env: str, value: str
) -> None:
    worker.admin().put(env, "a", flag())
    status, body = open_stream(stream_url(worker, env), headers={"Last-Event-ID": value})
    assert status == 400, body
    assert body["error"]["code"] == "BAD_REQUEST"
    assert "Last-Event-ID" in body["error"]["message"]
    query = urllib.parse.quote(value)
    status, body = open_stream(f"{stream_url(worker, env)}?last_event_id={query}")
    assert (status, body["error"]["code"]) == (400, "BAD_REQUEST")


def test_a_read_token_may_not_watch_an_environment_that_does_not_exist(
    worker: Worker, env: str
) -> None:
    status, body = open_stream(stream_url(worker, env), token=READ_TOKEN)
    assert (status, body["error"]["code"]) == (404, "ENVIRONMENT_NOT_FOUND")


def test_the_admin_may_watch_an_environment_before_creating_it(worker: Worker, env: str) -> None:
    events = EventStream(stream_url(worker, env))
    try:
        assert events.next() == (0, "snapshot", {"environment": env, "seq": 0, "flags": {}})
        worker.admin().put(env, "first", flag())
        assert events.next()[:2] == (1, "change")
    finally:
        events.close()


def test_closed_streams_leave_no_subscriber_set_behind(worker: Worker) -> None:
    def sets() -> float:
        return metric(worker, "flagstream_stream_environments") or 0.0

    before = sets()  # streams of earlier tests may still be open: they only go away
    made_up = [f"made-up-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    streams = [EventStream(stream_url(worker, name)) for name in made_up]
    for events in streams:
        assert events.next()[1] == "snapshot"
    assert sets() >= 3
    for events in streams:
        events.close()
    for name in made_up:  # a change makes each stream write, so the worker sees its client gone
        worker.admin().put(name, "wake", flag())
    wait_until(lambda: sets() <= before, timeout_s=30)


@pytest.fixture(scope="module")
def capped(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A worker serving at most 3 change streams, 2 per token."""
    started = Worker(
        broker,
        tmp_path_factory.mktemp("capped") / "data",
        "flagstream-stream-caps",
        FLAGSTREAM_MAX_STREAMS="3",
        FLAGSTREAM_MAX_STREAMS_PER_KEY="2",
    ).start()
    yield started
    started.stop()


def test_streams_are_capped_per_token_and_in_all(capped: Worker, env: str) -> None:
    capped.admin().put(env, "a", flag())
    url = stream_url(capped, env)
    held = [EventStream(url, token=READ_TOKEN), EventStream(url, token=READ_TOKEN)]
    try:
        status, body = open_stream(url, token=READ_TOKEN)
        assert (status, body["error"]["code"]) == (429, "TOO_MANY_STREAMS"), body
        held.append(EventStream(url))  # the admin token has its own share: the third stream
        status, body = open_stream(url)
        assert (status, body["error"]["code"]) == (503, "STREAM_CAPACITY"), body
        assert metric(capped, r'flagstream_stream_refusals_total\{cap="per_key"\}') == 1
        assert metric(capped, r'flagstream_stream_refusals_total\{cap="total"\}') == 1
        counted = re.escape('flagstream_http_requests_total{route="stream",status="429"}')
        assert (metric(capped, counted) or 0) >= 1
        held.pop(0).close()
        capped.admin().put(env, "b", flag())  # the closed stream writes, fails and frees its slot
        wait_until(lambda: open_stream(url, token=READ_TOKEN)[0] == 200, timeout_s=30)
    finally:
        for events in held:
            events.close()
