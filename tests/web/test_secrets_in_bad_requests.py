"""A request aiohttp cannot parse never echoes a token or an SDK key, nor logs one.

aiohttp's parser quotes the bytes it choked on in its error, and aiohttp wrote that error into
the 400 body and, with the traceback, into the worker's log: `Authorization: Bearer <admin
token>` one byte away from a valid header put the token in both. Every worker is checked with
the OFREP fast path in front of aiohttp and without it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ADMIN_TOKEN, SDK_KEY, Worker

SECRETS = (ADMIN_TOKEN.encode(), SDK_KEY.encode())
ADMIN = b"Authorization: Bearer " + ADMIN_TOKEN.encode()
SDK = b"Authorization: Bearer " + SDK_KEY.encode()
OFREP = b"POST /ofrep/v1/evaluate/flags/any-flag HTTP/1.1\r\nHost: t\r\n"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: t\r\n"
BAD_HEADS = {
    "control-char-after-token": OFREP + ADMIN + b"\x01\r\nContent-Length: 2\r\n\r\n{}",
    "bad-line-after-key": OFREP + SDK + b"\r\nno colon here\r\n\r\n",
    "lf-crlf-ending": OFREP + SDK + b"\r\nContent-Length: 2\n\r\n{}",
    "token-in-a-line-too-long": HEALTHZ + ADMIN + b"a" * 9000 + b"\r\n\r\n",
    "token-as-method": ADMIN_TOKEN.encode() + b" / HTTP/1.1\r\nHost: t\r\n\r\n",
    "key-in-an-invalid-target": b"GET http://%s@/ HTTP/1.1\r\nHost: t\r\n\r\n" % SDK_KEY.encode(),
    "key-in-a-bad-chunk": OFREP
    + SDK
    + b"\r\nTransfer-Encoding: chunked\r\n\r\nzz%s\r\n" % SDK_KEY.encode(),
    "token-in-a-request-without-host": b"GET /healthz HTTP/1.1\r\n" + ADMIN + b"\r\n\r\n",
}


@pytest.fixture(scope="module", params=["true", "false"], ids=["fast-path", "aiohttp-only"])
def any_worker(
    request: pytest.FixtureRequest, broker: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    data = tmp_path_factory.mktemp(f"secrets-{request.param}") / "data"
    # A group per parameter: the second worker starts on this module's broker after the first
    # stopped, and Tansu can keep a group whose leader left mid-rebalance stuck without a
    # leader (tests/app/infra/test_broker.py); these tests do not need the group to be shared.
    app_id = f"flagstream-secrets-{request.param}"
    started = Worker(broker, data, app_id, FLAGSTREAM_OFREP_FAST_PATH=request.param)
    yield started.start()
    started.stop()


def everything_answered(port: int, request: bytes) -> bytes:
    """Every byte the worker sends back until it closes the connection."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        connection.sendall(request)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
        return received
    finally:
        connection.close()


@pytest.mark.parametrize("name", sorted(BAD_HEADS))
def test_a_bad_request_is_a_400_without_its_secrets(any_worker: Worker, name: str) -> None:
    answered = everything_answered(any_worker.port, BAD_HEADS[name])
    assert answered.startswith((b"HTTP/1.0 400 ", b"HTTP/1.1 400 ")), answered[:200]
    assert b"400 Bad Request: " in answered
    assert not [secret for secret in SECRETS if secret in answered], answered


def test_no_secret_reaches_the_log(any_worker: Worker) -> None:
    """Run after the bad requests above (same worker): the log names neither secret."""
    for request in BAD_HEADS.values():  # again, so this test stands on its own too
        everything_answered(any_worker.port, request)
    log = Path(any_worker.log_path).read_bytes()
    assert not [secret for secret in SECRETS if secret in log], [
        line for line in log.splitlines() if any(secret in line for secret in SECRETS)
    ][:5]
