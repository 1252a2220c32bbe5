"""The experiment results stream: a `changed` event when new figures come, bounded like the
change stream (a read token, an experiment that exists, per-token and per-worker caps)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import pytest

from app.experiments.partials import Partial
from tests.app.experiments.test_report import experiment_flag, partial, two_partitions
from tests.conftest import READ_TOKEN, EventStream, Worker, wait_until
from tests.web.test_experiments_api import moved, publish, results_of, subjects_are
from tests.web.test_stream import open_stream


def stream_url(worker: Worker, env: str, key: str) -> str:
    return f"{worker.url}/api/v1/environments/{env}/experiments/{key}/stream"


def grown(old: Partial, more: int) -> Partial:
    """`old` read further: `more` subjects more per variant, each source offset 10 further."""
    variants = {
        name: dataclasses.replace(totals, subjects=totals.subjects + more)
        for name, totals in old.totals.variants.items()
    }
    offsets = {source: offset + 10 for source, offset in old.offsets.items()}
    return partial(
        old.partition,
        variants,
        offsets=offsets,
        environment=old.environment,
        experiment=old.experiment,
    )


def seeded(worker: Worker, broker: str, env: str, key: str) -> list[Partial]:
    worker.admin().put(env, key, experiment_flag())
    partials = moved(two_partitions(), env, key)
    publish(broker, *partials)
    subjects = sum(v.subjects for p in partials for v in p.totals.variants.values())
    wait_until(lambda: subjects_are(worker, env, key, subjects), timeout_s=30)
    return partials


def test_a_reader_is_told_at_once_and_again_when_new_figures_come(
    worker: Worker, broker: str, env: str
) -> None:
    key = "exp-" + uuid.uuid4().hex[:8]
    partials = seeded(worker, broker, env, key)
    events = EventStream(stream_url(worker, env, key), token=READ_TOKEN)
    try:
        assert events.next() == (1, "changed", {"environment": env, "key": key})
        publish(broker, grown(partials[0], 100))
        assert events.next() == (2, "changed", {"environment": env, "key": key})
        before = sum(v.subjects for p in partials for v in p.totals.variants.values())
        grew = 100 * len(partials[0].totals.variants)
        assert subjects_are(worker, env, key, before + grew), "the event came after the figures"
    finally:
        events.close()


def test_a_reader_is_told_when_the_experiment_s_flag_is_turned_off(
    worker: Worker, broker: str, env: str
) -> None:
    """No new figure comes when an experiment stops: the flag change is the news. Seen failing
    without the table listener (no second event: the read timed out)."""
    key = "exp-" + uuid.uuid4().hex[:8]
    seeded(worker, broker, env, key)
    events = EventStream(stream_url(worker, env, key), token=READ_TOKEN)
    try:
        assert events.next() == (1, "changed", {"environment": env, "key": key})
        worker.admin().set_state(env, key, "DISABLED")
        assert events.next() == (2, "changed", {"environment": env, "key": key})
        assert results_of(worker, env, key).body["status"] == "stopped"
    finally:
        events.close()


def test_no_token_is_a_401_and_a_made_up_experiment_a_404(worker: Worker, env: str) -> None:
    worker.admin().put(env, "a-flag", experiment_flag())
    status, body = open_stream(stream_url(worker, env, "a-flag"), token="")
    assert (status, body["error"]["code"]) == (401, "UNAUTHORIZED"), body
    status, body = open_stream(stream_url(worker, env, "made-up"), token=READ_TOKEN)
    assert (status, body["error"]["code"]) == (404, "EXPERIMENT_NOT_FOUND"), body
    status, body = open_stream(stream_url(worker, env, "x" * 300), token=READ_TOKEN)
    assert status == 404, body


@pytest.fixture(scope="module")
def capped(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A worker serving at most 3 streams, 2 per token."""
    started = Worker(
        broker,
        tmp_path_factory.mktemp("capped") / "data",
        "flagstream-experiment-stream-caps",
        FLAGSTREAM_MAX_STREAMS="3",
        FLAGSTREAM_MAX_STREAMS_PER_KEY="2",
    ).start()
    yield started
    started.stop()


def test_streams_are_capped_per_token_and_in_all(capped: Worker, env: str) -> None:
    capped.admin().put(env, "capped-exp", experiment_flag())
    url = stream_url(capped, env, "capped-exp")
    held = [EventStream(url, token=READ_TOKEN), EventStream(url, token=READ_TOKEN)]
    try:
        status, body = open_stream(url, token=READ_TOKEN)
        assert (status, body["error"]["code"]) == (429, "TOO_MANY_STREAMS"), body
        held.append(EventStream(url))  # the admin token's own share
        status, body = open_stream(url)
        assert (status, body["error"]["code"]) == (503, "STREAM_CAPACITY"), body
    finally:
        for events in held:
            events.close()
