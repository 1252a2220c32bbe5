"""A worker over TLS, end to end: the embedded broker behind a TLS-terminating proxy (socat,
OpenSSL) that asks for a client certificate, with a CA made for the test.

Tansu advertises the proxy's address, so every client a worker builds (Faust's, the flag
table's, the broker watch, dead letters, the Kafka evaluation agent, exposures, experiments)
reaches the broker only through TLS: one client built without the options would fail its part
below. The SASL mechanisms are checked where clients are built (test_kafka_security.py): the
embedded broker cannot check SASL credentials the way managed Kafka does.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.control.client import AdminClient
from app.evaluation.client import EvaluationClient
from app.infra.broker import free_port, port_open, start_broker, stop
from app.infra.settings import Settings
from tests.app.infra.test_kafka_security import KEY_PASSWORD, TlsFiles, make_tls_files
from tests.conftest import EXPERIMENT, READ_TOKEN, REPO, SDK_KEY, Worker, flag, wait_until

APP_ID = "flagstream-tls"


def start_proxy(port: int, upstream: int, tls: TlsFiles, log: Path) -> subprocess.Popen[bytes]:
    """socat terminating TLS on `port` (client certificate required) in front of `upstream`."""
    socat = shutil.which("socat")
    assert socat, "the TLS test needs socat (Debian: apt-get install socat)"
    listen = (
        f"openssl-listen:{port},bind=127.0.0.1,reuseaddr,fork,cert={tls.server_cert},"
        f"key={tls.server_key},cafile={tls.ca},verify=1"
    )
    with log.open("ab") as out:
        process = subprocess.Popen(
            [socat, "-d", listen, f"tcp:127.0.0.1:{upstream}"], stdout=out, stderr=out
        )
    wait_until(lambda: port_open("127.0.0.1", port) or process.poll() is not None, 10)
    assert process.poll() is None, log.read_text()
    return process


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_broker(tls: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of the TLS proxy, the only address the broker advertises."""
    logs = tmp_path_factory.mktemp("tls-broker")
    broker_port, proxy_port = free_port(), free_port()
    proxy_address = f"127.0.0.1:{proxy_port}"
    broker = start_broker("127.0.0.1", broker_port, advertised=proxy_address)
    proxy = start_proxy(proxy_port, broker_port, tls, logs / "socat.log")
    yield proxy_address
    stop(proxy)
    stop(broker)


def tls_env(tls: TlsFiles, key_password_file: Path, ca: Path | None = None) -> dict[str, str]:
    """A worker's settings for the proxy: TLS with a client certificate and encrypted key."""
    key_password_file.write_text(KEY_PASSWORD + "\n")
    return {
        "FLAGSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
        "FLAGSTREAM_KAFKA_SSL_CAFILE": str(ca or tls.ca),
        "FLAGSTREAM_KAFKA_SSL_CERTFILE": str(tls.client_cert),
        "FLAGSTREAM_KAFKA_SSL_KEYFILE": str(tls.client_key),
        "FLAGSTREAM_KAFKA_SSL_KEY_PASSWORD_FILE": str(key_password_file),
        "FLAGSTREAM_STATS_PUBLISH_MS": "200",
    }


def ofrep(worker: Worker, env_key: str, flag_key: str, targeting_key: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{worker.url}/ofrep/v1/evaluate/flags/{flag_key}",
        data=json.dumps({"context": {"targetingKey": targeting_key}}).encode(),
        headers={"Authorization": f"Bearer {env_key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body: dict[str, Any] = json.loads(response.read())
    return body


def subjects(worker: Worker, key: str) -> int:
    reply = AdminClient(worker.url, READ_TOKEN).request(
        "GET", f"/api/v1/environments/development/experiments/{key}/results"
    )
    return int(reply.body.get("subjects", 0)) if reply.status == 200 else 0


def evaluate_over_kafka(
    brokers: str, tls: TlsFiles, key_password_file: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """The evaluation client as a service would build it: from the FLAGSTREAM_* environment."""
    for name, value in {
        **tls_env(tls, key_password_file),
        "FLAGSTREAM_BROKERS": brokers,
        "FLAGSTREAM_APP_ID": APP_ID,
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()

    async def run() -> Any:
        async with EvaluationClient.from_settings(
            settings, timeout_s=30, fetch_max_wait_ms=10
        ) as client:
            return await client.evaluate("development", {"targetingKey": "user-1"}, ["tls-flag"])

    return asyncio.run(run())


def test_a_worker_over_tls_serves_writes_evaluations_and_experiments(
    tls_broker: str,
    tls: TlsFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = Worker(
        tls_broker, tmp_path / "data", APP_ID, **tls_env(tls, tmp_path / "key-password")
    )
    try:
        worker.start(timeout_s=90)
        # A write: the admin API, the decider (Faust), the changelog, the flag table.
        assert worker.admin().put("development", "tls-flag", flag("on"))["version"] == 1
        assert ofrep(worker, SDK_KEY, "tls-flag", "user-1")["value"] is True
        # The CLI, through the admin API of the worker that reached Kafka over TLS.
        listed = subprocess.run(
            [
                *(sys.executable, "-m", "app.cli", "flags", "list"),
                *("--env", "development", "--url", worker.url, "--token", READ_TOKEN),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert listed.returncode == 0 and "tls-flag" in listed.stdout, listed.stderr
        # Kafka evaluation: the client and the worker's agent, both over TLS.
        result = evaluate_over_kafka(tls_broker, tls, tmp_path / "client-key-pw", monkeypatch)
        assert result.error is None and result.flags["tls-flag"].value is True
        # Exposures produced, folded by the attribution, published and read back as results.
        worker.admin().put("development", "tls-experiment", EXPERIMENT)
        for user in range(20):
            ofrep(worker, SDK_KEY, "tls-experiment", f"user-{user}")
        wait_until(lambda: subjects(worker, "tls-experiment") == 20, 60)
    finally:
        worker.stop()
    log = worker.log_path.read_text(errors="replace")
    assert KEY_PASSWORD not in log
    assert "certificate verify failed" not in log


def test_a_worker_that_does_not_trust_the_broker_fails_clearly(
    tls_broker: str, tls: TlsFiles, tmp_path: Path
) -> None:
    env = tls_env(tls, tmp_path / "key-password", ca=tls.other_ca)
    worker = Worker(tls_broker, tmp_path / "data", APP_ID + "-untrusting", **env)
    worker.launch()
    assert worker.process is not None
    started = time.monotonic()
    try:
        code = worker.process.wait(timeout=90)  # exits, never hangs
    finally:
        worker.stop()
    log = worker.log_path.read_text(errors="replace")
    assert code != 0, log
    assert "certificate verify failed" in log, log[-3000:]
    assert time.monotonic() - started < 90
    assert KEY_PASSWORD not in log
    # One line that says why, not aiokafka's log line and a traceback.
    (line,) = log.strip().splitlines()
    assert line.startswith(f"flagstream: cannot reach Kafka at {tls_broker}: "), line
    assert "certificate verify failed" in line, line
