"""`flagstream worker` that cannot reach Kafka at start: one line saying why, exit code 1.

The wrong-CA case (TLS) is in tests/app/infra/test_kafka_security_tls.py; here a broker
address where nothing listens, the mistake a newcomer makes first."""

from __future__ import annotations

from pathlib import Path

from app.infra.broker import free_port
from tests.conftest import run_flagstream


def test_a_worker_whose_broker_is_not_there_says_so_in_one_line(tmp_path: Path) -> None:
    brokers = f"127.0.0.1:{free_port()}"  # a port nothing listens on
    env = {
        "FLAGSTREAM_BROKERS": brokers,
        "FLAGSTREAM_DATA_DIR": str(tmp_path / "data"),
        "FLAGSTREAM_ADMIN_TOKEN": "not-to-be-printed-admin-token",
        "FLAGSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "FLAGSTREAM_KAFKA_SASL_MECHANISM": "PLAIN",
        "FLAGSTREAM_KAFKA_SASL_USERNAME": "worker",
        "FLAGSTREAM_KAFKA_SASL_PASSWORD": "not-to-be-printed-password",
    }
    ran = run_flagstream("worker", timeout_s=120, **env)
    assert ran.returncode == 1, ran.stderr
    (line,) = (ran.stdout + ran.stderr).strip().splitlines()
    assert line.startswith(f"flagstream: cannot reach Kafka at {brokers}: "), line
    assert "Connect call failed" in line, line
    assert "not-to-be-printed" not in line
