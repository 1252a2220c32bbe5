"""The OFREP fast path (`app/web/fast_path.py`) over raw sockets against a real worker.

It answers plain single-flag evaluations itself and hands everything else to aiohttp, which
sends a `Server` header: its absence tells which path answered. The properties that matter:
every answer is the one aiohttp would give, order survives pipelining and hand-offs, framing
survives requests split anywhere, and nothing a client sends can hurt the worker.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN, SDK_KEY, Worker, flag

ENV = "development"  # the environment the worker's SDK_KEY selects
TARGETED = {
    "state": "ENABLED",
    "variants": {"control": "control", "treatment": "treatment"},
    "defaultVariant": "control",
    "targeting": {
        "if": [
            {"ends_with": [{"var": "email"}, "@example.com"]},
            {"fractional": [["control", 50], ["treatment", 50]]},
            "control",
        ]
    },
}
OBJECT = {
    "state": "ENABLED",
    "variants": {"small": {"size": 1}, "big": {"size": 9}},
    "defaultVariant": "small",
}


class WireReply:
    """An answer read off a raw socket: its bytes as sent, and which path wrote it."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def fast(self) -> bool:
        """Answered by the fast path (aiohttp always names itself in `Server`)."""
        return "server" not in self.headers

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One raw HTTP/1.1 connection: send any bytes, read replies one by one."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> WireReply:
        reply = self.reply_or_eof()
        assert reply is not None, "the server closed the connection"
        return reply

    def reply_or_eof(self) -> WireReply | None:
        """The next reply, or None when the server closed the connection instead."""
        status_line = self.file.readline()
        if not status_line:
            return None
        assert status_line.startswith(b"HTTP/1."), status_line
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        if status in (100, 304):
            return WireReply(status, headers, b"")
        return WireReply(status, headers, self.file.read(int(headers["content-length"])))

    def closed_by_server(self) -> bool:
        return self.file.read(1) == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def evaluation(
    key: str,
    context: Any = None,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    version: str = "1.1",
) -> bytes:
    """A single-flag OFREP request; `headers` replace or add to the usual ones."""
    if body is None:
        body = json.dumps({"context": context or {}}).encode()
    every = {"Host": "test", "Authorization": f"Bearer {SDK_KEY}", "Content-Length": str(len(body))}
    every.update(headers or {})
    head = "".join(f"{name}: {value}\r\n" for name, value in every.items() if value is not None)
    return f"POST /ofrep/v1/evaluate/flags/{key} HTTP/{version}\r\n{head}\r\n".encode() + body


def chunked(key: str, context: Any) -> bytes:
    """The same request with a chunked body, which only aiohttp answers."""
    body = json.dumps({"context": context}).encode()
    head = f"Host: test\r\nAuthorization: Bearer {SDK_KEY}\r\nTransfer-Encoding: chunked\r\n"
    request = f"POST /ofrep/v1/evaluate/flags/{key} HTTP/1.1\r\n{head}\r\n".encode()
    return request + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


GET_HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"


@pytest.fixture(scope="module")
def worker(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """The conftest's worker, never shedding: these tests pipeline thousands of requests on
    one connection on purpose and check every answer, which a loaded machine's lag would
    turn into some 429s (shedding is tests/web/test_overload.py's)."""
    data = tmp_path_factory.mktemp("worker") / "data"
    started = Worker(broker, data, "flagstream-test", FLAGSTREAM_SHED_LOOP_LAG_MS="0").start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def flags(worker: Worker) -> Worker:
    admin = worker.admin()
    admin.put(ENV, "fp-targeted", TARGETED)
    admin.put(ENV, "fp-bool", flag("on"))
    admin.put(ENV, "fp-object", OBJECT)
    admin.put(ENV, "fp-disabled", flag("on", state="DISABLED"))
    return worker


@pytest.fixture
def connection(flags: Worker) -> Iterator[Connection]:
    opened = Connection(flags.port)
    yield opened
    opened.close()


def test_keep_alive_requests_stay_on_the_fast_path_until_another_request(
    connection: Connection,
) -> None:
    context = {"targetingKey": "user-1", "email": "ann@example.com"}
    for _ in range(3):
        connection.send(evaluation("fp-targeted", context))
        reply = connection.reply()
        assert (reply.status, reply.fast) == (200, True)
        assert reply.headers["content-type"] == "application/json"
        assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", reply.headers["date"])
        assert reply.json()["key"] == "fp-targeted"
        assert reply.json()["reason"] == "TARGETING_MATCH"
    first = reply.body
    connection.send(GET_HEALTHZ)
    health = connection.reply()
    assert (health.status, health.fast) == (200, False)
    connection.send(evaluation("fp-targeted", context))
    after = connection.reply()
    assert (after.status, after.fast, after.body) == (200, False, first)


def test_pipelined_requests_are_answered_in_order_across_the_hand_off(
    connection: Connection,
) -> None:
    connection.send(
        evaluation("fp-bool")
        + evaluation("fp-missing")
        + evaluation("fp-object")
        + GET_HEALTHZ
        + evaluation("fp-bool")
    )
    replies = [connection.reply() for _ in range(5)]
    assert [(r.status, r.fast) for r in replies] == [
        (200, True),
        (404, True),
        (200, True),
        (200, False),
        (200, False),
    ]
    assert replies[0].json()["value"] is True
    assert replies[1].json()["errorCode"] == "FLAG_NOT_FOUND"
    assert replies[2].json()["value"] == {"size": 1}
    assert replies[4].body == replies[0].body


@pytest.mark.parametrize("cut", [1, 7, 40, 90, -20, -1])
def test_a_request_split_anywhere_is_framed_right(connection: Connection, cut: int) -> None:
    request = evaluation("fp-targeted", {"targetingKey": "user-2", "email": "bo@example.com"})
    connection.send(request[:cut])
    time.sleep(0.05)  # two reads on the server side
    connection.send(request[cut:] + evaluation("fp-bool"))
    first, second = connection.reply(), connection.reply()
    assert (first.status, first.fast, first.json()["key"]) == (200, True, "fp-targeted")
    assert (second.status, second.fast, second.json()["key"]) == (200, True, "fp-bool")


def test_a_request_sent_byte_by_byte(connection: Connection) -> None:
    for byte in evaluation("fp-bool", {"targetingKey": "x"}):
        connection.send(bytes([byte]))
    reply = connection.reply()
    assert (reply.status, reply.fast, reply.json()["value"]) == (200, True, True)


@pytest.mark.parametrize(
    ("key", "context"),
    [
        ("fp-targeted", {"targetingKey": "user-3", "email": "cy@example.com"}),
        ("fp-targeted", {"targetingKey": "user-4", "email": "cy@elsewhere.org"}),
        ("fp-targeted", {}),
        ("fp-bool", {"targetingKey": "user-5"}),
        ("fp-object", {}),
        ("fp-disabled", {}),
        ("fp-missing", {"targetingKey": "user-6"}),
    ],
)
def test_the_fast_path_answers_byte_for_byte_what_aiohttp_answers(
    flags: Worker, key: str, context: dict[str, Any]
) -> None:
    fast, slow = Connection(flags.port), Connection(flags.port)
    try:
        fast.send(evaluation(key, context))
        slow.send(chunked(key, context))
        ours, theirs = fast.reply(), slow.reply()
    finally:
        fast.close()
        slow.close()
    assert (ours.fast, theirs.fast) == (True, False)
    assert (ours.status, ours.headers["content-type"], ours.body) == (
        theirs.status,
        theirs.headers["content-type"],
        theirs.body,
    )


BIG = 300_000  # over the worker's FLAGSTREAM_MAX_BODY_BYTES (262144)


def assert_handed_to_aiohttp(flags: Worker, request_bytes: bytes, status: int, check: str) -> None:
    """The request, alone on a new connection, is answered by aiohttp (not the fast path)."""
    connection = Connection(flags.port)
    try:
        connection.send(request_bytes)
        reply = connection.reply()
    finally:
        connection.close()
    assert reply.status == status, reply.body
    assert check.encode() in reply.body
    assert not reply.fast


@pytest.mark.parametrize(
    ("request_bytes", "status", "check"),
    [
        (evaluation("fp-bool", headers={"Authorization": None}), 401, "an SDK key is required"),
        (evaluation("fp-bool", headers={"Authorization": "Bearer nope"}), 401, "SDK key"),
        (
            evaluation("fp-bool", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}),
            403,
            "admin and read tokens",
        ),
        (evaluation("fp-bool", body=b"{not json"), 400, "PARSE_ERROR"),
        (evaluation("fp-bool", body=b"[1, 2]"), 400, "INVALID_CONTEXT"),
        (evaluation("fp-bool", body=b'{"context": {"targetingKey": 7}}'), 400, "targetingKey"),
        (evaluation("fp-bool", body=b"\xff\xfe"), 400, "PARSE_ERROR"),
        (evaluation("fp-bool", body=b"x" * BIG), 413, "at most"),
        (evaluation("fp-bool", version="1.0"), 200, '"value":true'),
        (evaluation("fp%2Dbool"), 200, '"key":"fp-bool"'),
        (evaluation("_not-a-key"), 404, "FLAG_NOT_FOUND"),
        (b"GET /ofrep/v1/evaluate/flags/fp-bool HTTP/1.1\r\nHost: t\r\n\r\n", 405, ""),
        # Heads aiohttp refuses with a 400 although llhttp alone takes them (issue 8, item 13).
        (evaluation("fp-bool", headers={"Host": None}), 400, "Missing 'Host' header"),
        (evaluation("fp-bool", headers={"Host": "a\r\nHost: b"}), 400, "Duplicate 'Host'"),
        (
            evaluation("fp-bool", headers={"User-Agent": "a\r\nUser-Agent: b"}),
            400,
            "Duplicate 'User-Agent'",
        ),
        (evaluation("fp-bool", headers={"X-Big": "a" * 20_000}), 400, "longer than 8190 bytes"),
        (
            evaluation("fp-bool", headers={f"X-{i}": "v" for i in range(130)}),
            400,
            "Too many headers",
        ),
        (evaluation("fp-bool", headers={"Sec-WebSocket-Key1": "x"}), 400, "header field"),
        (evaluation("fp-bool", headers={"Content-Encoding": "gzip"}), 400, "match its headers"),
        (evaluation("fp-bool").replace(b"\r\n\r\n", b"\n\r\n", 1), 400, "not valid HTTP"),
        # Over 8190 bytes but no field over it: aiohttp's to judge, and it answers.
        (
            evaluation(
                "fp-bool", headers={"X-A": "a" * 3000, "X-B": "b" * 3000, "X-C": "c" * 3000}
            ),
            200,
            '"value":true',
        ),
    ],
    ids=[
        "no-key",
        "unknown-key",
        "admin-token",
        "not-json",
        "not-an-object",
        "targeting-key-type",
        "not-utf8",
        "too-large",
        "http-1.0",
        "percent-encoded-key",
        "impossible-key",
        "wrong-method",
        "no-host",
        "two-hosts",
        "two-user-agents",
        "20-kb-header-in-one-read",
        "too-many-headers",
        "old-websocket-key",
        "content-encoding",
        "head-ended-by-lf-crlf",
        "long-head-of-short-fields",
    ],
)
def test_requests_the_fast_path_declines_get_aiohttps_answer(
    flags: Worker, request_bytes: bytes, status: int, check: str
) -> None:
    assert_handed_to_aiohttp(flags, request_bytes, status, check)


def test_an_x_api_key_is_answered_on_the_fast_path(connection: Connection) -> None:
    connection.send(evaluation("fp-bool", headers={"Authorization": None, "X-API-Key": SDK_KEY}))
    reply = connection.reply()
    assert (reply.status, reply.fast, reply.json()["value"]) == (200, True, True)


def test_expect_100_continue_goes_to_aiohttp(connection: Connection) -> None:
    body = json.dumps({"context": {"targetingKey": "u"}}).encode()
    head = evaluation("fp-bool", body=body, headers={"Expect": "100-continue"})[: -len(body)]
    connection.send(head)
    assert connection.reply().status == 100
    connection.send(body)
    reply = connection.reply()
    assert (reply.status, reply.fast, reply.json()["value"]) == (200, False, True)


def test_connection_close_is_honoured(connection: Connection) -> None:
    connection.send(evaluation("fp-bool", headers={"Connection": "close"}) + evaluation("fp-bool"))
    reply = connection.reply()
    assert (reply.status, reply.fast, reply.headers["connection"]) == (200, True, "close")
    assert connection.closed_by_server()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\xff\x16\x03\x01 not http at all\r\n\r\n",
        b"POST /ofrep/v1/evaluate/flags/fp-bool HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
        b"POST /ofrep/v1/evaluate/flags/fp-bool HTTP/1.1\r\nContent-Length: 5\r\n"
        b"Content-Length: 9\r\n\r\n12345",
        b"POST /ofrep/v1/evaluate/flags/fp-bool HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /ofrep/v1/evaluate/flags/fp-bool HTTP/1.1\r\nContent-Length: 0\r\n"
        b"Content-Length: 2\r\n\r\n{}",
        b"POST /ofrep/v1/evaluate/flags/fp-bool HTTP/1.1\nHost: t\nContent-Length: 2\n\n{}",
        b"GET /ofrep/v1/events HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n",
        evaluation(".."),
    ],
    ids=[
        "binary",
        "huge-header",
        "two-lengths",
        "negative-length",
        "zero-then-two-lengths",
        "bare-line-feeds",
        "upgrade",
        "connect",
        "dot-segment",
    ],
)
def test_bad_heads_get_an_error_from_aiohttp_and_hurt_nothing(
    flags: Worker, garbage: bytes
) -> None:
    connection = Connection(flags.port)
    try:
        connection.send(garbage)
        try:
            reply = connection.reply_or_eof()  # a hang fails here, with a timeout
        except ConnectionResetError:
            reply = None
        # An error from aiohttp, or the connection closed: either, as long as the worker lives.
        assert reply is None or (400 <= reply.status < 500 and not reply.fast)
    finally:
        connection.close()
    healthy = Connection(flags.port)
    try:
        healthy.send(evaluation("fp-bool"))
        reply = healthy.reply()
        assert (reply.status, reply.fast) == (200, True)
    finally:
        healthy.close()
    assert flags.process is not None and flags.process.poll() is None


def test_a_client_that_does_not_read_is_throttled_not_buffered(flags: Worker) -> None:
    """20,000 pipelined requests sent before reading one reply: all answered, in order."""
    count = 20_000
    requests = [evaluation("fp-bool" if i % 2 else "fp-object") for i in range(count)]
    connection = Connection(flags.port)
    sender = threading.Thread(target=connection.send, args=(b"".join(requests),))
    try:
        sender.start()
        time.sleep(1.0)  # the server's send buffer fills: it must stop reading, not buffer
        replies = [connection.reply() for _ in range(count)]
        sender.join(30)
    finally:
        connection.close()
    assert all(reply.status == 200 and reply.fast for reply in replies)
    values = [reply.json()["value"] for reply in replies[:4]]
    assert values == [{"size": 1}, True, {"size": 1}, True]


def test_fast_path_evaluations_and_hand_offs_are_counted(flags: Worker) -> None:
    connection = Connection(flags.port)
    try:
        connection.send(evaluation("fp-bool", {"targetingKey": "counted"}))
        assert connection.reply().fast
    finally:
        connection.close()
    connection = Connection(flags.port)
    try:
        connection.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")  # handed to aiohttp
        assert connection.reply().status == 200
    finally:
        connection.close()
    text = flags.metrics()
    evaluated = re.search(
        r'flagstream_evaluations_total\{environment="development",flag="fp-bool",path="ofrep",'
        r"[^}]*\} (\S+)",
        text,
    )
    assert evaluated is not None and float(evaluated.group(1)) >= 1, [
        line for line in text.splitlines() if "evaluations" in line or "fast_path" in line
    ]
    assert re.search(r'flagstream_ofrep_fast_path_handoffs_total\{reason="other"\} [1-9]', text)
    assert re.search(r"flagstream_ofrep_fast_path_connections_total [1-9]", text)


def evaluations_scraped(worker: Worker, flag_key: str) -> dict[str, float]:
    """The worker's OFREP evaluation counts of one flag, by variant."""
    labels = f'environment="development",flag="{re.escape(flag_key)}",path="ofrep"'
    pattern = (
        r"flagstream_evaluations_total\{" + labels + r',reason="[A-Z_]+",variant="([^"]*)"\} (\S+)'
    )

    return {variant: float(value) for variant, value in re.findall(pattern, worker.metrics())}


def test_a_scrape_after_n_fast_answers_shows_exactly_n_more(flags: Worker) -> None:
    """The fast path counts each answer in place (`app.evaluation.stats.Tallies`) and the
    counts are folded in at the scrape: every answer is counted once, whichever variant."""
    before = evaluations_scraped(flags, "fp-targeted")
    connection = Connection(flags.port)
    try:
        for n in range(40):
            email = "ann@example.com" if n % 4 else "bob@other.org"  # control by rule
            connection.send(evaluation("fp-targeted", {"targetingKey": f"u{n}", "email": email}))
        replies = [connection.reply() for _ in range(40)]
        assert all(reply.status == 200 and reply.fast for reply in replies)
        sent = {"control": 0, "treatment": 0}
        for reply in replies:
            sent[reply.json()["variant"]] += 1
        after = evaluations_scraped(flags, "fp-targeted")
        assert {v: after.get(v, 0) - before.get(v, 0) for v in sent} == sent
        connection.send(evaluation("fp-targeted", {"targetingKey": "u1", "email": "x@y.z"}))
        assert connection.reply().fast
    finally:
        connection.close()
    again = evaluations_scraped(flags, "fp-targeted")
    assert sum(again.values()) - sum(before.values()) == 41


def test_a_connection_whose_credential_changes_is_checked_again(connection: Connection) -> None:
    """The fast path remembers the credential headers it admitted on a connection (the key is
    not looked up again while they stay the same): a request carrying anything else is
    checked anew, so an unknown key after a known one is refused, never answered with the
    environment the known key selected; the same key by another header stays fast."""
    x_api_key = {"Authorization": None, "X-API-Key": SDK_KEY}
    connection.send(evaluation("fp-bool"))
    connection.send(evaluation("fp-bool", headers=x_api_key))
    connection.send(evaluation("fp-bool", headers={"Authorization": f"Bearer {SDK_KEY}x"}))
    replies = [connection.reply() for _ in range(3)]
    assert [(reply.status, reply.fast) for reply in replies] == [
        (200, True),
        (200, True),
        (401, False),
    ]


def every_flag(
    context: Any = None,
    *,
    headers: dict[str, str | None] | None = None,
    body: bytes | None = None,
    query: str = "",
) -> bytes:
    """A bulk OFREP request; `headers` replace or add to the usual ones."""
    if body is None:
        body = json.dumps({"context": context or {}}).encode()
    every: dict[str, str | None] = {
        "Host": "test",
        "Authorization": f"Bearer {SDK_KEY}",
        "Content-Length": str(len(body)),
    }
    every.update(headers or {})
    head = "".join(f"{name}: {value}\r\n" for name, value in every.items() if value is not None)
    return f"POST /ofrep/v1/evaluate/flags{query} HTTP/1.1\r\n{head}\r\n".encode() + body


def every_flag_chunked(context: Any, headers: dict[str, str] | None = None) -> bytes:
    """The same bulk request with a chunked body, which only aiohttp answers."""
    body = json.dumps({"context": context}).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = f"Host: test\r\nAuthorization: Bearer {SDK_KEY}\r\nTransfer-Encoding: chunked\r\n"
    request = f"POST /ofrep/v1/evaluate/flags HTTP/1.1\r\n{head}{extra}\r\n".encode()
    return request + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


def test_bulk_evaluations_are_answered_on_the_fast_path_and_keep_it(
    connection: Connection,
) -> None:
    """A bulk request is answered without a hand-off: the connection's next requests (bulk
    and single) are still answered by the fast path, a 304 included."""
    context = {"targetingKey": "user-7", "email": "di@example.com"}
    connection.send(every_flag(context))
    first = connection.reply()
    assert (first.status, first.fast) == (200, True), first.body
    flags = {item["key"]: item for item in first.json()["flags"]}
    assert flags["fp-bool"]["value"] is True
    assert flags["fp-targeted"]["reason"] == "TARGETING_MATCH"
    assert first.json()["eventStreams"][0]["endpoint"] == {"requestUri": "/ofrep/v1/events"}
    etag = first.headers["etag"]
    connection.send(every_flag(context, headers={"If-None-Match": etag}))
    unchanged = connection.reply()
    assert (unchanged.status, unchanged.fast, unchanged.headers["etag"]) == (304, True, etag)
    assert "content-length" not in unchanged.headers
    connection.send(every_flag({"targetingKey": "user-8"}, headers={"If-None-Match": etag}))
    other_context = connection.reply()
    assert (other_context.status, other_context.fast) == (200, True)
    assert other_context.headers["etag"] != etag
    connection.send(evaluation("fp-bool"))
    single = connection.reply()
    assert (single.status, single.fast, single.json()["value"]) == (200, True, True)


@pytest.mark.parametrize(
    ("context", "if_none_match"),
    [({"targetingKey": "user-9", "email": "ed@example.com"}, False), ({}, False), ({}, True)],
    ids=["targeted", "empty-context", "not-modified"],
)
def test_the_fast_path_answers_bulk_as_aiohttp_does(
    flags: Worker, context: dict[str, Any], if_none_match: bool
) -> None:
    fast, slow = Connection(flags.port), Connection(flags.port)
    try:
        headers: dict[str, str] = {}
        if if_none_match:
            fast.send(every_flag(context))
            headers["If-None-Match"] = fast.reply().headers["etag"]
        fast.send(every_flag(context, headers=dict(headers)))
        slow.send(every_flag_chunked(context, headers))
        ours, theirs = fast.reply(), slow.reply()
    finally:
        fast.close()
        slow.close()
    assert (ours.fast, theirs.fast) == (True, False)
    assert (ours.status, ours.headers.get("etag"), ours.body) == (
        theirs.status,
        theirs.headers.get("etag"),
        theirs.body,
    )
    assert ours.headers.get("content-type") == theirs.headers.get("content-type")


@pytest.mark.parametrize(
    ("request_bytes", "status", "check"),
    [
        (every_flag(headers={"Authorization": None}), 401, "an SDK key is required"),
        (every_flag(body=b"{not json"), 400, "PARSE_ERROR"),
        (every_flag(body=b'{"context": [1]}'), 400, "INVALID_CONTEXT"),
        (every_flag(body=b"x" * BIG), 413, "at most"),
        (every_flag(query="?flagConfigEtag=%2299999999%22"), 200, '"flags"'),  # waits, answers
        (every_flag(query="#fragment"), 200, '"flags"'),  # aiohttp drops it
    ],
    ids=["no-key", "not-json", "not-an-object", "too-large", "version-not-applied", "fragment"],
)
def test_bulk_requests_the_fast_path_declines_get_aiohttps_answer(
    flags: Worker, request_bytes: bytes, status: int, check: str
) -> None:
    assert_handed_to_aiohttp(flags, request_bytes, status, check)


def test_a_bulk_refetch_of_an_applied_version_stays_fast(connection: Connection) -> None:
    connection.send(every_flag())
    etag = connection.reply().headers["etag"]
    version = etag.strip('"').split("-")[0]
    connection.send(every_flag(query=f"?flagConfigEtag=%22{version}%22&x=1"))
    reply = connection.reply()
    assert (reply.status, reply.fast, reply.headers["etag"]) == (200, True, etag)


def test_fast_path_bulk_answers_are_counted(flags: Worker) -> None:
    def counted() -> float:
        found = re.search(
            r'^flagstream_http_requests_total\{route="ofrep_bulk",status="200"\} (\S+)$',
            flags.metrics(),
            re.M,
        )
        return 0.0 if found is None else float(found.group(1))

    before = counted()
    connection = Connection(flags.port)
    try:
        connection.send(every_flag() + every_flag())
        assert all(connection.reply().fast for _ in range(2))
    finally:
        connection.close()
    assert counted() == before + 2
