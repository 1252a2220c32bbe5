"""Who may do what, and where secrets never go (issue 8, part 2 item 4), against a real worker
holding two SDK keys for two environments.

Rules, one test each: writes need the admin token; reads need a read token (the admin API) or
the environment's SDK key (OFREP, evaluate, exposures); one environment's key never sees
another's flags; no secret in the log, dead letters, metrics or any answer, however a client
misplaces it; body and head limits; secrets compared in constant time (read from the source:
app/web/auth.py compares them only through hmac.compare_digest or a SHA-256 digest lookup,
checked by walking its syntax tree, because a timing test on a loaded 2-core machine could
not tell a few nanoseconds from noise).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN, READ_TOKEN, REPO, SDK_KEY, Worker, flag, read_topic
from tests.web.test_bad_input import exchange
from tests.worker_topics import topics_of

OTHER_KEY = "other-sdk-key-for-staging"
SECRETS = (ADMIN_TOKEN, READ_TOKEN, SDK_KEY, OTHER_KEY)
API = "/api/v1/environments"
DEV, STAGING = "development", "staging"
FLAG = json.dumps(flag()).encode()
WRITES = [
    ("PUT", f"{API}/{DEV}/flags/guarded", FLAG),
    ("DELETE", f"{API}/{DEV}/flags/guarded", b""),
    ("POST", f"{API}/{DEV}/flags/guarded/state", b'{"state": "DISABLED"}'),
]
READS = [
    ("GET", API),
    ("GET", f"{API}/{DEV}/flags"),
    ("GET", f"{API}/{DEV}/flags/guarded"),
    ("GET", f"{API}/{DEV}/flags/guarded/history"),
    ("GET", f"{API}/{DEV}/stream"),
]


@pytest.fixture(scope="module")
def worker(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    keys = f"{SDK_KEY}={DEV},{OTHER_KEY}={STAGING}"
    data = tmp_path_factory.mktemp("security") / "data"
    started = Worker(broker, data, "flagstream-security", FLAGSTREAM_SDK_KEYS=keys).start()
    admin = started.admin()
    admin.put(DEV, "guarded", flag("on"))
    admin.put(DEV, "dev-only", flag("on"))
    admin.put(STAGING, "staging-only", flag("on"))
    yield started
    started.stop()


def headers_for(credential: str | None) -> dict[str, str]:
    return {} if credential is None else {"Authorization": f"Bearer {credential}"}


def flags_of(worker: Worker) -> Any:
    return worker.admin().flags(DEV), worker.admin().flags(STAGING)


@pytest.mark.parametrize(("method", "path", "body"), WRITES, ids=["put", "delete", "state"])
@pytest.mark.parametrize(
    ("credential", "status"),
    [(READ_TOKEN, 403), (SDK_KEY, 401), (OTHER_KEY, 401), (None, 401), ("wrong", 401)],
    ids=["read-token", "sdk-key", "other-sdk-key", "none", "wrong"],
)
def test_writes_need_the_admin_token(
    worker: Worker, method: str, path: str, body: bytes, credential: str | None, status: int
) -> None:
    before = flags_of(worker)
    got, answer = exchange(worker, method, path, None, body, headers_for(credential))
    assert got == status, answer
    assert answer["error"]["code"] == ("FORBIDDEN" if status == 403 else "UNAUTHORIZED")
    assert flags_of(worker) == before


@pytest.mark.parametrize(
    "misplaced",
    [
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": ADMIN_TOKEN},
        {"Authorization": f"Bearer{ADMIN_TOKEN}"},
        {"X-Admin-Token": ADMIN_TOKEN},
        {"Cookie": f"token={ADMIN_TOKEN}"},
    ],
    ids=["basic-scheme", "no-scheme", "no-space", "other-header", "cookie"],
)
def test_a_misplaced_admin_token_does_not_write(worker: Worker, misplaced: dict[str, str]) -> None:
    before = flags_of(worker)
    status, answer = exchange(worker, "PUT", f"{API}/{DEV}/flags/guarded", None, FLAG, misplaced)
    assert status == 401, answer
    status, answer = exchange(
        worker, "PUT", f"{API}/{DEV}/flags/guarded?token={ADMIN_TOKEN}", None, FLAG
    )
    assert status == 401, answer
    assert flags_of(worker) == before


@pytest.mark.parametrize(("method", "path"), READS, ids=[p.rsplit("/", 1)[1] for _, p in READS])
def test_admin_reads_need_a_read_token(worker: Worker, method: str, path: str) -> None:
    for credential in (None, "wrong", SDK_KEY, OTHER_KEY):
        status, answer = exchange(worker, method, path, None, b"", headers_for(credential))
        assert status == 401, (credential, answer)
    if not path.endswith("/stream"):  # a stream answers 200 and stays open
        assert exchange(worker, method, path, READ_TOKEN)[0] == 200


def test_an_sdk_key_evaluates_its_own_environment_only(worker: Worker) -> None:
    ofrep = "/ofrep/v1/evaluate/flags/"
    status, answer = exchange(worker, "POST", ofrep + "dev-only", SDK_KEY, b"{}")
    assert (status, answer["value"]) == (200, True)
    status, answer = exchange(worker, "POST", ofrep + "staging-only", SDK_KEY, b"{}")
    assert (status, answer["errorCode"]) == (404, "FLAG_NOT_FOUND")
    status, answer = exchange(worker, "POST", ofrep + "staging-only", OTHER_KEY, b"{}")
    assert (status, answer["value"]) == (200, True)

    _, bulk = exchange(worker, "POST", "/ofrep/v1/evaluate/flags", OTHER_KEY, b"{}")
    assert [f["key"] for f in bulk["flags"]] == ["staging-only"]
    _, bulk = exchange(worker, "POST", "/ofrep/v1/evaluate/flags", SDK_KEY, b"{}")
    assert "staging-only" not in json.dumps(bulk)

    own = exchange(worker, "POST", f"{API}/{STAGING}/evaluate", OTHER_KEY, b"{}")
    assert own[0] == 200 and [f["key"] for f in own[1]["flags"]] == ["staging-only"]
    other = exchange(worker, "POST", f"{API}/{STAGING}/evaluate", SDK_KEY, b"{}")
    assert other[0] == 401 and "staging-only" not in json.dumps(other[1])

    item = {"flag": "staging-only", "variant": "on", "targeting_key": "u"}
    body = json.dumps({"exposures": [item]}).encode()
    status, answer = exchange(worker, "POST", "/api/v1/exposures", SDK_KEY, body)
    assert status == 202 and answer["accepted"] == 0
    assert "no flag 'staging-only' in 'development'" in json.dumps(answer)
    assert exchange(worker, "POST", "/api/v1/exposures", OTHER_KEY, body)[1]["accepted"] == 1


@pytest.mark.parametrize("credential", [ADMIN_TOKEN, READ_TOKEN, None, "wrong"])
def test_only_sdk_keys_evaluate_over_ofrep(worker: Worker, credential: str | None) -> None:
    for path in ("/ofrep/v1/evaluate/flags/dev-only", "/ofrep/v1/evaluate/flags"):
        status, answer = exchange(worker, "POST", path, None, b"{}", headers_for(credential))
        assert status == (403 if credential in (ADMIN_TOKEN, READ_TOKEN) else 401), answer
        assert "value" not in answer and "flags" not in answer
    status, _ = exchange(worker, "GET", "/ofrep/v1/events", None, b"", headers_for(credential))
    assert status in (401, 403)
    status, _ = exchange(worker, "POST", "/api/v1/exposures", None, b"{}", headers_for(credential))
    assert status == 401


@pytest.mark.parametrize("header", ["X-Actor", "Idempotency-Key"])
@pytest.mark.parametrize("secret", SECRETS, ids=["admin", "read", "sdk", "other-sdk"])
def test_a_write_whose_actor_or_idempotency_key_holds_a_secret_is_refused(
    worker: Worker, header: str, secret: str
) -> None:
    """Both are stored in the changelog and history and echoed in answers and dead letters:
    a write with `X-Actor: <admin token>` put the token in the flag history, and an
    `Idempotency-Key: <SDK key>` on a refused write echoed the key in the 422 body."""
    before = flags_of(worker)
    for body in (FLAG, b'{"state": "ON"}'):
        value = f"ci {secret}" if header == "X-Actor" else secret
        status, answer = exchange(
            worker, "PUT", f"{API}/{DEV}/flags/guarded", ADMIN_TOKEN, body, {header: value}
        )
        assert status == 400, answer
        assert answer["error"]["message"] == (
            "X-Actor and Idempotency-Key must not hold a token or an SDK key"
        )
    assert flags_of(worker) == before


def test_no_secret_in_answers_logs_dead_letters_or_metrics(worker: Worker) -> None:
    """Secrets sent in odd places, then everything the worker wrote is searched for them."""
    answers = []
    odd = [
        ("PUT", f"{API}/{DEV}/flags/leak", b'{"state": "ON"}', {"X-Actor": ADMIN_TOKEN}),
        ("PUT", f"{API}/{DEV}/flags/leak", b"{", {"Idempotency-Key": SDK_KEY}),
        ("GET", f"{API}/{DEV}/flags?sdk_key={SDK_KEY}", b"", {"Authorization": f"Basic {SDK_KEY}"}),
        ("POST", "/ofrep/v1/evaluate/flags/dev-only", b"{", {"X-API-Key": f"{READ_TOKEN}x"}),
        ("POST", "/ofrep/v1/evaluate/flags", b"{}", {"Authorization": f"Token {OTHER_KEY}"}),
        ("POST", f"{API}/{DEV}/evaluate?token={READ_TOKEN}", b"[", {"X-Actor": READ_TOKEN}),
        ("POST", "/api/v1/exposures", b"{", {"Authorization": f"Bearer {ADMIN_TOKEN}"}),
        ("GET", f"{API}/{DEV}/stream", b"", {"Last-Event-ID": ADMIN_TOKEN, "X-Actor": ADMIN_TOKEN}),
        ("GET", f"{API}/{DEV}/flags/dev-only", b"", {"If-None-Match": SDK_KEY}),
    ]
    for method, path, body, headers in odd:
        credential = ADMIN_TOKEN if "X-Actor" in headers or "Idempotency-Key" in headers else None
        answers.append(exchange(worker, method, path, credential, body, headers))
    # A command on Kafka whose payload is refused: its dead letter must not gain a secret.
    worker.admin().request("PUT", f"{API}/{DEV}/flags/leak", {"state": "ON"})
    topics = topics_of(worker)
    everything = {
        "answers": json.dumps(answers),
        "log": Path(worker.log_path).read_text(errors="replace"),
        "metrics": worker.metrics(),
        "dead letters": json.dumps(read_topic(worker.brokers, topics.dead_letters, idle_s=0.3)),
        "flag changes": json.dumps(read_topic(worker.brokers, topics.flag_changes, 4, idle_s=0.3)),
    }
    leaks = {
        (where, secret)
        for where, text in everything.items()
        for secret in SECRETS
        if secret in text
    }
    assert not leaks


def test_a_body_over_the_limit_is_413(worker: Worker) -> None:
    huge = b'{"pad": "' + b"x" * 300_000 + b'"}'
    for method, path, token in (
        ("PUT", f"{API}/{DEV}/flags/guarded", ADMIN_TOKEN),
        ("POST", "/ofrep/v1/evaluate/flags/dev-only", SDK_KEY),
        ("POST", "/api/v1/exposures", SDK_KEY),
    ):
        status, _ = exchange(worker, method, path, token, huge)
        assert status == 413


@pytest.mark.parametrize(
    "headers",
    [{"X-Pad": "a" * 9000}, {f"X-Pad-{n}": "a" for n in range(200)}],
    ids=["a-field-over-8190-bytes", "200-fields"],
)
@pytest.mark.parametrize("path", ["/ofrep/v1/evaluate/flags/dev-only", f"{API}/{DEV}/flags"])
def test_an_oversized_head_is_refused(worker: Worker, headers: dict[str, str], path: str) -> None:
    status, answer = exchange(worker, "POST", path, SDK_KEY, b"{}", headers)
    assert status in (400, 431), answer
    assert exchange(worker, "POST", "/ofrep/v1/evaluate/flags/dev-only", SDK_KEY, b"{}")[0] == 200


SECRET_NAMES = {"token", "given", "admin_token", "read_token", "read_tokens", "api_key", "secret"}


def names_in(node: ast.AST) -> set[str]:
    found = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            found.add(child.id)
        elif isinstance(child, ast.Attribute):
            found.add(child.attr)
    return found


def test_secrets_are_compared_in_constant_time_only() -> None:
    """No `==`, `!=`, `in` or `<` touches a token in app/web/auth.py; the admin and read
    tokens go through hmac.compare_digest, SDK keys through a SHA-256 digest lookup."""
    source = (REPO / "app" / "web" / "auth.py").read_text()
    tree = ast.parse(source)
    plain = [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        and not all(isinstance(op, ast.Is | ast.IsNot) for op in node.ops)
        and names_in(node) & SECRET_NAMES
    ]
    assert not plain, plain
    digests = [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "hmac.compare_digest"
    ]
    assert any("admin_token" in call for call in digests), digests
    assert any("read_token" in call for call in digests), digests
    assert "hashlib.sha256(token" in source
    # Nothing else in the app reads the tokens to compare them.
    # Those that hold them: the checks, the settings, and the CLI that hands them out or sends them.
    holders = {
        "app/web/auth.py",
        "app/infra/settings.py",
        "app/cli/supervisor.py",
        "app/cli/up_state.py",
        "app/cli/flags.py",  # reads the admin token (or its file) to send it
    }
    for path in (REPO / "app").rglob("*.py"):
        if path.relative_to(REPO).as_posix() in holders:
            continue
        text = path.read_text()
        assert "admin_token" not in text and "read_tokens" not in text, path
