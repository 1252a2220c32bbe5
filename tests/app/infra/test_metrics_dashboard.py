"""deploy/grafana/flagstream.json: valid, provisioned, and every panel's query answered live.

The dashboard reads app/infra/metrics.py's metrics (and the collectors registered beside them),
so it is tested here, beside the alert rules: the JSON and its provisioning files agree, every
query is valid PromQL for `promtool check rules` (wrapped into recording rules), every metric
it names is exported by a live worker, and a real Prometheus scraping a real worker each
second answers every panel's query with data while a short load runs (the test ends as soon
as all of them have, bounded).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import re
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from app.evaluation.client import EvaluationClient
from app.infra.broker import free_port, stop
from app.infra.topics import Topics
from tests.app.infra.test_metrics_alerts import exported_names, metric_names, promtool
from tests.conftest import ADMIN_TOKEN, EXPERIMENT, REPO, SDK_KEY, Worker, flag, wait_until

GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "flagstream.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "flagstream.yml"
ENVIRONMENT = "development"  # the SDK key's environment
# The live worker signs its changelog, as production should (the changelog panel's "signed").
CHANGELOG_KEY = "dashboard-test-changelog-key-of-32-bytes-or-more"
# What Grafana puts for the template variables ("All") and its interval macros.
SUBSTITUTIONS = {"$instance": ".*", "$environment": ".*", "$__rate_interval": "1m"}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def substituted(expression: str) -> str:
    for variable, value in SUBSTITUTIONS.items():
        expression = expression.replace(variable, value)
    return expression


def queries() -> dict[str, str]:
    """Every panel target's expression, variables substituted, by `<panel title> <refId>`."""
    return {
        f"{panel['title']} {target['refId']}": substituted(target["expr"])
        for panel in panels()
        for target in panel["targets"]
    }


def variable_queries() -> list[str]:
    return [variable["query"]["query"] for variable in dashboard()["templating"]["list"]]


def test_the_dashboard_has_its_rows_unique_ids_and_no_import_placeholder() -> None:
    board = dashboard()
    rows = [panel["title"] for panel in board["panels"] if panel["type"] == "row"]
    ids = [panel["id"] for panel in board["panels"]]
    assert board["uid"] == "flagstream" and board["schemaVersion"] >= 39
    assert rows == [
        "Evaluations",
        "Flag changes",
        "Consumer lag",
        "Experiments",
        "HTTP",
        "Resources",
    ]
    assert len(ids) == len(set(ids)), ids
    assert "${DS_" not in DASHBOARD.read_text()  # a provisioned dashboard is not imported
    for panel in panels():  # a panel's queries are told apart by their refId
        references = [target["refId"] for target in panel["targets"]]
        assert references and len(references) == len(set(references)), panel["title"]


def test_every_datasource_is_the_provisioned_prometheus() -> None:
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    used = [panel["datasource"] for panel in panels()]
    used += [target["datasource"] for panel in panels() for target in panel["targets"]]
    used += [variable["datasource"] for variable in dashboard()["templating"]["list"]]
    assert {(d["type"], d["uid"]) for d in used} == {("prometheus", source["uid"])}


def test_the_provider_reads_the_dashboards_folder() -> None:
    (provider,) = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_promtool_checks_every_panel_query(tmp_path: Path) -> None:
    rules = [
        {"record": f"flagstream_dashboard:query_{index}", "expr": expression}
        for index, expression in enumerate(queries().values())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_variable_query_is_label_values_of_a_metric() -> None:
    for query in variable_queries():
        assert re.fullmatch(r"label_values\([a-z_]+\{[^}]*\}, [a-z_]+\)", query), query


# -- live: a real Prometheus scraping a real worker ----------------------------------------


def prometheus_binary() -> str:
    """The prometheus server; skipped without it locally, a failure under CI (as promtool)."""
    promtool()  # the same Debian package: fails or skips the same way
    found = shutil.which("prometheus")
    if found is None:
        pytest.fail("the prometheus package has promtool but no prometheus server")
    return found


class Prometheus:
    """A Prometheus server on a free loopback port, scraping one worker every second."""

    def __init__(self, binary: str, metrics_port: int, data_dir: Path) -> None:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "flagstream",
                    "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                }
            ],
        }
        data_dir.mkdir()
        (data_dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = (data_dir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={data_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={data_dir / 'tsdb'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector `expression` returns now."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def close(self) -> None:
        stop(self.process)
        self.log.close()


def has_data(result: list[dict[str, Any]]) -> bool:
    """Whether an instant vector holds a number (NaN: a ratio or quantile of no events)."""
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


@pytest.fixture(scope="module")
def loaded_worker(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A worker whose every dashboard series can be driven cheaply: one change stream at
    most (the second is a 503), shedding at 5 ms of loop lag (a turn budget of 2 ms: a burst
    sheds), experiment totals published twice a second, a changelog key (signed records)."""
    started = Worker(
        broker,
        tmp_path_factory.mktemp("dashboard") / "data",
        "flagstream-dashboard",
        FLAGSTREAM_MAX_STREAMS="1",
        FLAGSTREAM_SHED_LOOP_LAG_MS="5",
        FLAGSTREAM_STATS_PUBLISH_MS="500",
        FLAGSTREAM_CHANGELOG_KEY=CHANGELOG_KEY,
    ).start()
    admin = started.admin()
    admin.put(ENVIRONMENT, "plain", flag("on"))
    admin.put(ENVIRONMENT, "experiment", EXPERIMENT)
    yield started
    started.stop()


def test_every_metric_of_the_dashboard_is_exported_by_a_live_worker(
    loaded_worker: Worker,
) -> None:
    exported = exported_names(loaded_worker.metrics())
    read = {name for q in [*queries().values(), *variable_queries()] for name in metric_names(q)}
    assert read, "no metric found in the dashboard"
    assert sorted(read - exported) == []


def status_of(worker: Worker, method: str, path: str, token: str, body: Any = None) -> int:
    """The status of one request (any status: the load wants 4xx and 5xx too)."""
    connection = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=30)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


async def burst(worker: Worker, requests: int) -> None:
    """Many OFREP evaluations at once: more than one loop turn's budget, so some are shed."""
    url = f"{worker.url}/ofrep/v1/evaluate/flags/plain"
    headers = {"Authorization": f"Bearer {SDK_KEY}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int) -> None:
            body = {"context": {"targetingKey": f"burst-{i}"}}
            async with session.post(url, json=body, headers=headers) as response:
                await response.read()

        # A connection the worker closes under the burst is no failure: only the count matters.
        await asyncio.gather(*(one(i) for i in range(requests)), return_exceptions=True)


def drive_once(worker: Worker, round_: int) -> None:
    """One round of every kind of load a panel shows."""
    admin = worker.admin()
    admin.put(ENVIRONMENT, "plain", flag("on" if round_ % 2 else "off"))  # a change applied
    bad = flag("missing-variant")  # a 422 and a dead letter
    status_of(worker, "PUT", f"/api/v1/environments/{ENVIRONMENT}/flags/bad", ADMIN_TOKEN, bad)
    for subject in range(20):  # exposures of both variants
        context = {"context": {"targetingKey": f"user-{round_}-{subject}"}}
        status_of(worker, "POST", "/ofrep/v1/evaluate/flags/experiment", SDK_KEY, context)
    status_of(
        worker, "POST", "/ofrep/v1/evaluate/flags", SDK_KEY, {"context": {"targetingKey": "b"}}
    )

    async def kafka() -> None:
        topics = Topics.named(worker.app_id)
        options = {"timeout_s": 30, "fetch_max_wait_ms": 10}
        async with EvaluationClient(worker.brokers, topics=topics, **options) as client:
            await client.evaluate_many(ENVIRONMENT, [{"targetingKey": "k"}], ["plain"])

    asyncio.run(kafka())
    asyncio.run(burst(worker, 200))
    refuse_a_second_stream(worker)


def refuse_a_second_stream(worker: Worker) -> None:
    """A 503 (FLAGSTREAM_MAX_STREAMS=1): the one 5xx a healthy worker gives on demand."""
    path = f"/api/v1/environments/{ENVIRONMENT}/stream"
    first = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=30)
    try:
        first.request("GET", path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert first.getresponse().status == 200
        assert status_of(worker, "GET", path, ADMIN_TOKEN) == 503
    finally:
        first.close()


def test_every_panel_query_returns_data_from_a_live_prometheus(
    loaded_worker: Worker, tmp_path: Path
) -> None:
    prometheus = Prometheus(prometheus_binary(), loaded_worker.metrics_port, tmp_path / "prom")
    done = threading.Event()
    failures: list[BaseException] = []

    def drive() -> None:
        # rate() needs two scrapes around an increase: the load runs until every query answered.
        round_ = 0
        while not done.is_set():
            try:
                drive_once(loaded_worker, round_)
            except BaseException as exc:  # reported by the test, not lost in the thread
                failures.append(exc)
                return
            round_ += 1

    driver = threading.Thread(target=drive, name="dashboard-load")
    try:
        wait_until(prometheus.ready, timeout_s=60)
        driver.start()
        waiting = dict(queries())

        def all_answered() -> bool:
            if failures:
                raise RuntimeError("the load failed") from failures[0]
            for name, expression in list(waiting.items()):
                if has_data(prometheus.query(expression)):
                    del waiting[name]
            return not waiting

        try:
            wait_until(all_answered, timeout_s=180, interval_s=1.0)
        except AssertionError:
            raise AssertionError(f"no data for {sorted(waiting)}") from None
        # The changelog panel shows a worker with a key as signing, and no record refused.
        (signed,) = prometheus.query('flagstream_changelog_signed{job="flagstream"}')
        refused = prometheus.query(
            'flagstream_changelog_records_total{job="flagstream", result=~"unsigned|forged"}'
        )
        assert float(signed["value"][1]) == 1.0
        assert sorted(float(sample["value"][1]) for sample in refused) == [0.0, 0.0]
    finally:
        done.set()
        if driver.is_alive():
            driver.join(timeout=120)
        prometheus.close()
