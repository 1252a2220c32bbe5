"""Every HTTP endpoint reads the whole body (app.web.inputs), however it arrives, up to the limit.

Bodies are sent over raw sockets, so the test decides how they are cut: in two writes with a
pause between them, or chunked. 413 above FLAGSTREAM_MAX_BODY_BYTES, chunked included.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import ADMIN_TOKEN, SDK_KEY, Worker, flag

ENV = "development"  # what SDK_KEY selects
MAX_BODY = 262_144  # the default FLAGSTREAM_MAX_BODY_BYTES the worker runs with
PAUSE_S = 0.3  # between the two writes of one body: the stimulus, not a synchronisation


def exchange(worker: Worker, head: bytes, parts: Iterator[bytes], pause_s: float = 0.0) -> int:
    """Send `head` then each of `parts` (pausing between them) and return the answer's status.

    A sender thread writes while this thread reads, so an early answer (413 before the body
    is all sent) is read; the server closing the connection then stops the sender.
    """
    with socket.create_connection(("127.0.0.1", worker.port), timeout=30) as sock:

        def send() -> None:
            try:
                sock.sendall(head)
                for index, part in enumerate(parts):
                    if index and pause_s:
                        time.sleep(pause_s)
                    sock.sendall(part)
            except OSError:
                pass  # answered and closed before the whole body was sent

        sender = threading.Thread(target=send)
        sender.start()
        reader = sock.makefile("rb")
        status_line = reader.readline()
        sender.join(timeout=60)
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        return int(status_line.split()[1])


def request_head(method: str, path: str, token: str, length: int | None = None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"{method} {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\nConnection: close\r\n\r\n"
    ).encode()


def chunked(body: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        piece = body[start : start + size]
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
    yield b"0\r\n\r\n"


# (method, path, token, body, status of a complete body): one request per endpoint that reads one.
ENDPOINTS = [
    ("PUT", f"/api/v1/environments/{ENV}/flags/bodies", ADMIN_TOKEN, flag(), 200),
    ("POST", f"/api/v1/environments/{ENV}/flags/bodies/state", ADMIN_TOKEN, {"state": "ON"}, 422),
    ("POST", f"/api/v1/environments/{ENV}/evaluate", ADMIN_TOKEN, {"context": {}}, 200),
    (
        "POST",
        "/api/v1/exposures",
        SDK_KEY,
        {"exposures": [{"flag": "bodies", "variant": "on", "targeting_key": "u"}]},
        202,
    ),
    ("POST", "/ofrep/v1/evaluate/flags", SDK_KEY, {"context": {"targetingKey": "u"}}, 200),
    ("POST", "/ofrep/v1/evaluate/flags/bodies", SDK_KEY, {"context": {"targetingKey": "u"}}, 200),
]
IDS = ["admin-put", "admin-state", "evaluate", "exposures", "ofrep-bulk", "ofrep-single"]


@pytest.fixture(scope="module", autouse=True)
def bodies_flag(worker: Worker) -> None:
    worker.admin().put(ENV, "bodies", flag())


def test_a_150_kb_flag_put_succeeds(worker: Worker) -> None:
    variants = {f"v{n}": "x" * 1000 for n in range(150)}
    definition = {"state": "ENABLED", "variants": variants, "defaultVariant": "v0"}
    body = json.dumps(definition).encode()
    assert 150_000 < len(body) < MAX_BODY
    head = request_head("PUT", f"/api/v1/environments/{ENV}/flags/large", ADMIN_TOKEN, len(body))
    # As TCP may deliver it: in segments, the handler running before the last one arrived.
    segments = (body[start : start + 16_384] for start in range(0, len(body), 16_384))
    assert exchange(worker, head, segments, PAUSE_S / 10) == 200
    assert worker.admin().flags(ENV)["large"] == definition


@pytest.mark.parametrize(("method", "path", "token", "document", "status"), ENDPOINTS, ids=IDS)
def test_a_body_sent_in_two_writes_is_read_whole(
    worker: Worker, method: str, path: str, token: str, document: object, status: int
) -> None:
    body = json.dumps(document).encode()
    half = len(body) // 2
    head = request_head(method, path, token, len(body))
    assert exchange(worker, head, iter([body[:half], body[half:]]), PAUSE_S) == status


@pytest.mark.parametrize(("method", "path", "token", "document", "status"), ENDPOINTS, ids=IDS)
def test_a_chunked_body_is_read_whole(
    worker: Worker, method: str, path: str, token: str, document: object, status: int
) -> None:
    body = json.dumps(document).encode()
    head = request_head(method, path, token)
    assert exchange(worker, head, chunked(body, 7), PAUSE_S / 10) == status


@pytest.mark.parametrize(("method", "path", "token", "document", "status"), ENDPOINTS, ids=IDS)
def test_a_10_mb_chunked_body_is_413(
    worker: Worker, method: str, path: str, token: str, document: object, status: int
) -> None:
    body = b'{"pad": "' + b"x" * 10_000_000 + b'"}'
    assert exchange(worker, request_head(method, path, token), chunked(body, 65_536)) == 413
