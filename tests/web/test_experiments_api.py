"""The experiment views on a real worker: partials published to `experiment-stats` on the real
broker come back through `GET …/experiments` and `…/results` with every figure equal to
`results(merge(partials))`, malformed records end as dead letters, older partials are ignored,
and /metrics exports the experiments' health. Both views answer 503 until the worker's flag
table has caught up (in process: a worker's recovery is too short to catch)."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from app.control.client import AdminClient, Reply
from app.evaluation.live_flags import LiveFlags
from app.experiments.partials import Partial, Progress, encode_partial, encode_progress
from app.experiments.stats_feed import ExperimentStatsFeed
from app.infra.metrics import Metrics
from app.infra.records import Rejection
from app.infra.settings import Settings
from app.web.auth import Credentials
from app.web.experiments import ExperimentsApi
from tables.flags import FlagTable
from tables.replication import FlagReplication
from tests.app.experiments.test_report import (
    assert_equals_results,
    design,
    experiment_flag,
    partial,
    two_partitions,
    variant_totals,
)
from tests.conftest import READ_TOKEN, Worker, produce, read_topic, wait_until
from tests.worker_topics import SHARED_WORKER_TOPICS

API = "/api/v1/environments"
SOURCE_PARTITIONS = 8  # the default FLAGSTREAM_EXPOSURE_PARTITIONS the worker runs with


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def reader(worker: Worker) -> AdminClient:
    return AdminClient(worker.url, READ_TOKEN)


def results_of(worker: Worker, env: str, key: str) -> Reply:
    return reader(worker).request("GET", f"/api/v1/environments/{env}/experiments/{key}/results")


def listing(worker: Worker, env: str) -> dict[str, dict[str, Any]]:
    reply = reader(worker).request("GET", f"/api/v1/environments/{env}/experiments")
    assert reply.status == 200, reply.body
    return {entry["key"]: entry for entry in reply.body["experiments"]}


def publish(broker: str, *records: Partial | Progress) -> None:
    encoded = [encode_partial(r) if isinstance(r, Partial) else encode_progress(r) for r in records]
    produce(broker, SHARED_WORKER_TOPICS.experiment_stats, encoded)


def moved(partials: list[Partial], env: str, key: str) -> list[Partial]:
    """The same partials, of experiment `key` in `env`."""
    return [
        partial(p.partition, dict(p.totals.variants), environment=env, experiment=key)
        for p in partials
    ]


def subjects_are(worker: Worker, env: str, key: str, subjects: int) -> dict[str, Any] | None:
    reply = results_of(worker, env, key)
    if reply.status == 200 and reply.body["subjects"] == subjects:
        return dict(reply.body)
    return None


def test_the_results_view_gives_every_figure_of_the_merged_partials(
    worker: Worker, broker: str, env: str
) -> None:
    key = unique("exp")
    worker.admin().put(env, key, experiment_flag())
    partials = moved(two_partitions(), env, key)
    at = 1_795_600_000.0
    progress = [Progress(p, {"exposures": 10 * p}, p, at) for p in range(SOURCE_PARTITIONS)]
    publish(broker, *partials, *progress)
    want = sum(v.subjects for p in partials for v in p.totals.variants.values())

    def merged_and_every_partition_heard() -> dict[str, Any] | None:
        # The totals and the progress records arrive in separate fetches of the stats feed:
        # the view may show the subjects before the last partition's progress.
        body = subjects_are(worker, env, key, want)
        return body if body is not None and not body["lag"]["missing_partitions"] else None

    body = wait_until(merged_and_every_partition_heard, timeout_s=30)
    assert_equals_results(body, partials, design(key, version=1))
    assert (body["flag"], body["flag_version"], body["status"]) == (key, 1, "running")
    lag = body["lag"]
    assert lag["missing_partitions"] == []
    assert lag["worst_behind"] == SOURCE_PARTITIONS - 1
    assert lag["worst_seconds"] >= 0
    entry = listing(worker, env)[key]
    assert entry == {
        "key": key,
        "flag": key,
        "status": "running",
        "subjects": want,
        "srm_mismatch": body["srm"]["mismatch"],
    }


def test_experiments_are_listed_with_their_status(worker: Worker, broker: str, env: str) -> None:
    waiting, disabled, gone = unique("waiting"), unique("disabled"), unique("gone")
    worker.admin().put(env, waiting, experiment_flag())
    worker.admin().put(env, disabled, {**experiment_flag(), "state": "DISABLED"})
    worker.admin().put(env, unique("plain"), {**experiment_flag(), "metadata": {}})
    publish(broker, *moved(two_partitions(), env, gone))  # no flag runs it any more

    def with_gone() -> dict[str, dict[str, Any]] | None:
        entries = listing(worker, env)
        return entries if gone in entries else None

    found = wait_until(with_gone)
    assert {k: e["status"] for k, e in found.items()} == {
        waiting: "no_data",
        disabled: "stopped",
        gone: "stopped",
    }
    assert found[waiting]["subjects"] == 0 and found[waiting]["srm_mismatch"] is False
    assert found[gone]["flag"] is None and found[gone]["srm_mismatch"] is None
    # An experiment with partials but no flag still has results: the partials' variants.
    body = results_of(worker, env, gone).body
    assert [v["variant"] for v in body["variants"]] == ["blue", "control", "green"]
    assert body["srm"]["unavailable"] is not None


def test_an_unknown_experiment_is_404_and_reads_need_a_read_token(worker: Worker, env: str) -> None:
    reply = results_of(worker, env, "nothing-here")
    assert reply.status == 404
    assert reply.body == {
        "error": {
            "code": "EXPERIMENT_NOT_FOUND",
            "message": f"no experiment 'nothing-here' in '{env}'",
            "problems": [],
        }
    }
    assert results_of(worker, env, "x" * 300).status == 404
    anonymous = AdminClient(worker.url, "not-a-token")
    for path in (f"{API}/{env}/experiments", f"{API}/{env}/experiments/k/results"):
        assert anonymous.request("GET", path).status == 401
    bad = reader(worker).request("GET", "/api/v1/environments/b%20d/experiments")
    assert bad.status == 400 and bad.body["error"]["code"] == "BAD_REQUEST"
    assert listing(worker, env) == {}


def test_a_malformed_record_becomes_a_dead_letter_and_the_feed_goes_on(
    worker: Worker, broker: str, env: str
) -> None:
    key = unique("exp")
    worker.admin().put(env, key, experiment_flag())
    bad = b'{"schema": 1, "experiment": "x", "environment": 3}'
    [offset] = produce(broker, SHARED_WORKER_TOPICS.experiment_stats, [(b"bad", bad)], partition=5)
    good = partial(
        1, {"control": variant_totals(9, 1, 3.0, 5.0, {})}, environment=env, experiment=key
    )
    publish(broker, good)
    wait_until(lambda: subjects_are(worker, env, key, 9), timeout_s=30)

    def letter() -> dict[str, Any] | None:
        for found in read_topic(broker, SHARED_WORKER_TOPICS.dead_letters, idle_s=0.3):
            if (
                found.get("topic") == SHARED_WORKER_TOPICS.experiment_stats
                and found.get("offset") == offset
            ):
                return found
        return None

    dead = wait_until(letter, timeout_s=30)
    assert (dead["code"], dead["partition"], dead["payload"]) == ("MALFORMED", 5, bad.decode())
    assert re.search(
        r'^flagstream_experiment_stats_records_total\{outcome="rejected"\} [1-9]',
        worker.metrics(),
        re.MULTILINE,
    )


def test_an_older_partial_does_not_replace_a_newer_one(
    worker: Worker, broker: str, env: str
) -> None:
    key = unique("exp")
    worker.admin().put(env, key, experiment_flag())

    def on(partition: int, subjects: int, exposures: int) -> Partial:
        totals = {"control": variant_totals(subjects, 1, 2.0, 4.0, {})}
        offsets = {"exposures": exposures, "metric-events": 3}
        return partial(partition, totals, environment=env, experiment=key, offsets=offsets)

    publish(broker, on(2, 40, 100), on(2, 25, 90), on(2, 30, 100), on(6, 1, 1))
    body = wait_until(lambda: subjects_are(worker, env, key, 41), timeout_s=30)
    assert body["variants"][0]["subjects"] == 41  # 40 (the newest of partition 2) + 1


def test_metrics_export_each_experiments_health(worker: Worker, broker: str, env: str) -> None:
    key = unique("exp")
    worker.admin().put(env, key, experiment_flag())
    partials = moved(two_partitions(), env, key)
    publish(broker, *partials)
    want = sum(v.subjects for p in partials for v in p.totals.variants.values())
    body = wait_until(lambda: subjects_are(worker, env, key, want), timeout_s=30)
    text = worker.metrics()
    labels = f'environment="{env}",experiment="{key}"'
    for variant in body["variants"]:
        line = f'flagstream_experiment_subjects{{{labels},variant="{variant["variant"]}"}} '
        assert f"{line}{float(variant['subjects'])}" in text
    assert f"flagstream_experiment_crossovers{{{labels}}} {float(body['crossovers'])}" in text
    match = re.search(rf"^flagstream_experiment_srm_p_value\{{{labels}\}} (\S+)$", text, re.M)
    assert match and float(match.group(1)) == body["srm"]["p_value"]
    assert re.search(r"^flagstream_experiments_unexported \d", text, re.M)


async def _nothing_rejected(rejection: Rejection, raw: bytes | None, p: int, o: int) -> None:
    raise AssertionError("the feed is not started here")


def test_the_views_answer_503_until_the_flag_table_caught_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: they answered at once from a table still recovering, calling every running
    experiment "stopped" (its flag not read yet)."""
    monkeypatch.setenv("FLAGSTREAM_READ_TOKENS", READ_TOKEN)
    monkeypatch.setenv("FLAGSTREAM_DATA_DIR", str(tmp_path))
    settings = Settings.from_env()

    async def run() -> list[tuple[int, Any, str | None]]:
        table = FlagTable(tmp_path / "flags", history_depth=5, stream_depth=5, change_id_depth=5)
        table.open()
        metrics = Metrics(CollectorRegistry())
        replication = FlagReplication(settings, table, metrics)
        feed = ExperimentStatsFeed(settings, metrics, _nothing_rejected)
        api = ExperimentsApi(settings, Credentials(settings), LiveFlags(table), feed, replication)
        app = web.Application()
        app.add_routes(api.routes())
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        answers = []
        try:
            async with aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {READ_TOKEN}"}
            ) as session:
                for path in ("/experiments", "/experiments/k/results", "/experiments"):
                    if path == "/experiments" and answers:
                        replication.ready.set()  # caught up
                    url = f"http://127.0.0.1:{port}{API}/dev{path}"
                    async with session.get(url) as response:
                        body = await response.json()
                        answers.append((response.status, body, response.headers.get("Retry-After")))
        finally:
            await runner.cleanup()
            table.close()
        return answers

    waiting, waiting_results, ready = asyncio.run(run())
    for status, body, retry in (waiting, waiting_results):
        assert (status, body["error"]["code"], retry) == (503, "NOT_READY", "1"), body
    assert ready[:2] == (200, {"environment": "dev", "experiments": []})
