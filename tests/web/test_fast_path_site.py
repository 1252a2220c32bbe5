"""`FastPathSite` in process, on a real socket with a real aiohttp runner behind it.

What a worker cannot show quickly: idle connections are closed (the sweep runs every 15 s in
production, 50 ms here), stopping the site closes the connections it still holds, and an
`Answer` that raises becomes a 500 that closes the connection instead of killing it silently.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from app.infra.metrics import Metrics
from app.web import fast_path
from app.web.auth import bearer
from app.web.fast_path import FastPathSite, QuietSite

METRICS = Metrics(CollectorRegistry())  # apart from the process's registry

REQUEST = (
    b"POST /ofrep/v1/evaluate/flags/%s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer k\r\n"
    b"Content-Length: 2\r\n\r\n{}"
)


def answer(token: str | None, key: str, body: bytes) -> tuple[int, bytes] | None:
    if key == "boom":
        raise RuntimeError("an engine bug")
    if token != "k":
        return None
    return 200, b'{"key":"%s"}' % key.encode()


def admits(token: str | None) -> bool:
    return token == "k"


async def aiohttp_answer(request: web.Request) -> web.Response:
    return web.json_response({"by": "aiohttp", "key": request.match_info.get("key")}, status=401)


@contextlib.asynccontextmanager
async def site_with(routes: list[web.RouteDef], **options: Any) -> AsyncIterator[FastPathSite]:
    """A fast path site on a free port, in front of an aiohttp app answering `routes`."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = FastPathSite(runner, "127.0.0.1", 0, **options)
    await site.start()
    try:
        yield site
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[FastPathSite]:
    async with site_with(
        [
            web.post("/ofrep/v1/evaluate/flags/{key}", aiohttp_answer),
            web.get("/other", aiohttp_answer),
        ],
        answer=answer,
        admits=admits,
        max_body=1024,
        metrics=METRICS,
    ) as site:
        yield site


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> bytes:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


def test_idle_connections_are_closed_and_busy_ones_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_path, "SWEEP_S", 0.05)
    monkeypatch.setattr(fast_path, "IDLE_SWEEPS", 5)

    async def scenario() -> None:
        async with serving() as site:
            idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", site.port)
            busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", site.port)
            for _ in range(fast_path.IDLE_SWEEPS * 3):
                reply = await exchange(busy_reader, busy_writer, REQUEST % b"f")
                assert reply.endswith(b'{"key":"f"}')
                await asyncio.sleep(fast_path.SWEEP_S * 0.5)
            # By now the idle one has missed at least IDLE_SWEEPS sweeps: closed.
            assert await asyncio.wait_for(idle_reader.read(), 2) == b""
            reply = await exchange(busy_reader, busy_writer, REQUEST % b"f")
            assert reply.startswith(b"HTTP/1.1 200 OK")
            busy_writer.close()
            idle_writer.close()

    asyncio.run(scenario())


def test_stopping_the_site_closes_its_connections() -> None:
    async def scenario() -> None:
        async with serving() as site:
            reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
            assert (await exchange(reader, writer, REQUEST % b"f")).startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()

    asyncio.run(scenario())


def test_an_answer_that_raises_is_a_500_that_closes_the_connection() -> None:
    async def scenario() -> None:
        async with serving() as site:
            reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
            reply = await exchange(reader, writer, REQUEST % b"boom")
            assert reply.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
            assert b"Connection: close\r\n" in reply
            assert reply.endswith(
                b'{"key":"boom","errorDetails":"internal error while evaluating"}'
            )
            assert await asyncio.wait_for(reader.read(), 2) == b""
            # The site lives on: a new connection is answered, and a declined one by aiohttp.
            reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
            assert (await exchange(reader, writer, REQUEST % b"f")).startswith(b"HTTP/1.1 200")
            declined = REQUEST.replace(b"Bearer k", b"Bearer x") % b"f"
            assert (await exchange(reader, writer, declined)).endswith(
                b'"by": "aiohttp", "key": "f"}'
            )
            writer.close()

    asyncio.run(scenario())


KINDS = {
    "fast": REQUEST,
    "declined": REQUEST.replace(b"Bearer k", b"Bearer x"),
    "chunked": b"POST /ofrep/v1/evaluate/flags/%s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer k"
    b"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "other": b"GET /other HTTP/1.1\r\nHost: t\r\nX-Key: %s\r\n\r\n",
}


@settings(max_examples=60, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=1, max_value=2000), max_size=6),
)
def test_any_sequence_split_anywhere_is_answered_in_order(
    kinds: list[str], cuts: list[int]
) -> None:
    """Fast answers until the first request aiohttp must answer, then aiohttp's, in order."""
    keys = [f"k{i}".encode() for i in range(len(kinds))]
    stream = b"".join(KINDS[kind] % key for kind, key in zip(kinds, keys, strict=True))
    pieces, start = [], 0
    for cut in [*sorted({c % len(stream) for c in cuts} - {0}), len(stream)]:
        pieces.append(stream[start:cut])
        start = cut
    handed_off = False
    expected = []
    for kind, key in zip(kinds, keys, strict=True):
        handed_off = handed_off or kind != "fast"
        if not handed_off:
            expected.append(b'{"key":"%s"}' % key)
        elif kind == "other":
            expected.append(b'{"by": "aiohttp", "key": null}')
        else:
            expected.append(b'{"by": "aiohttp", "key": "%s"}' % key)

    async def scenario() -> list[bytes]:
        async with serving() as site:
            reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.001)  # let the server read each piece on its own
            bodies = []
            for _ in kinds:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                bodies.append(await reader.readexactly(length))
            writer.close()
            return bodies

    assert asyncio.run(scenario()) == expected


@contextlib.asynccontextmanager
async def serving_bodies(max_buffered: int) -> AsyncIterator[FastPathSite]:
    """A site that takes bodies up to 100 KB and holds at most `max_buffered` unfinished."""
    async with site_with(
        [web.post("/ofrep/v1/evaluate/flags/{key}", aiohttp_answer)],
        answer=answer,
        admits=admits,
        max_body=100_000,
        metrics=METRICS,
        max_buffered=max_buffered,
    ) as site:
        yield site


def with_body(length: int, token: bytes = b"k") -> bytes:
    return (
        b"POST /ofrep/v1/evaluate/flags/f HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
        b"Content-Length: %d\r\n\r\n" % (token, length)
    )


async def answer_of(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


def test_an_unknown_key_is_refused_at_the_head_before_its_body() -> None:
    """aiohttp answers at once: the fast path does not wait for (or hold) the body."""

    async def scenario() -> None:
        async with serving_bodies(max_buffered=1_000_000) as site:
            reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
            writer.write(with_body(90_000, token=b"x") + b"{" * 1000)
            assert (await answer_of(reader)).endswith(b'{"by": "aiohttp", "key": "f"}')
            assert site.buffered == 0
            writer.close()

    asyncio.run(scenario())


def test_connections_read_in_one_turn_are_answered_together_each_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reads of one turn are answered by one callback (`Connections.answer_ready`), and
    each connection still gets its pipelined answers in order."""
    turns: list[int] = []
    answer_ready = fast_path.Connections.answer_ready

    def recording(self: fast_path.Connections) -> None:
        turns.append(len(self.ready))
        answer_ready(self)

    monkeypatch.setattr(fast_path.Connections, "answer_ready", recording)

    async def scenario() -> None:
        async with serving() as site:
            clients = [await asyncio.open_connection("127.0.0.1", site.port) for _ in range(8)]
            for client, (_, writer) in enumerate(clients):  # all sent before the server reads
                writer.write(b"".join(REQUEST % b"c%d-%d" % (client, n) for n in range(3)))
            for client, (reader, writer) in enumerate(clients):
                for n in range(3):
                    assert (await answer_of(reader)).endswith(b'{"key":"c%d-%d"}' % (client, n))
                writer.close()

    asyncio.run(scenario())
    assert max(turns) > 1


def test_a_turn_frames_every_read_then_evaluates_them_in_arrival_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A turn frames every read before it evaluates any (`Connections.answer_ready` says why)
    and evaluates them in the order it framed them; a request the `Answer` declines then
    still goes to aiohttp with its connection, and the others of its turn are answered."""
    events: list[tuple[str, str]] = []
    answer_ready, frame_head = fast_path.Connections.answer_ready, fast_path.FastPath._frame_head

    def turn(self: fast_path.Connections) -> None:
        events.append(("turn", ""))
        answer_ready(self)

    def framing(self: fast_path.FastPath, buffer: bytes | bytearray, start: int) -> str | None:
        reason = frame_head(self, buffer, start)
        events.append(("frame", self._key))
        return reason

    def declining(token: str | None, key: str, body: bytes) -> tuple[int, bytes] | None:
        events.append(("answer", key))
        return None if key == "declined" else answer(token, key, body)

    monkeypatch.setattr(fast_path.Connections, "answer_ready", turn)
    monkeypatch.setattr(fast_path.FastPath, "_frame_head", framing)
    keys = [b"declined" if n == 3 else b"c%d" % n for n in range(8)]

    async def scenario() -> None:
        routes = [web.post("/ofrep/v1/evaluate/flags/{key}", aiohttp_answer)]
        options: dict[str, Any] = {"admits": admits, "max_body": 1024, "metrics": METRICS}
        async with site_with(routes, answer=declining, **options) as site:
            clients = [await asyncio.open_connection("127.0.0.1", site.port) for _ in keys]
            for key, (_, writer) in zip(keys, clients, strict=True):  # sent before any read
                writer.write(REQUEST % key)
            for key, (reader, writer) in zip(keys, clients, strict=True):
                reply = await answer_of(reader)
                if key == b"declined":
                    assert reply.endswith(b'{"by": "aiohttp", "key": "declined"}')
                    again = await exchange(reader, writer, REQUEST % b"after")  # aiohttp's now
                    assert again.endswith(b'{"by": "aiohttp", "key": "after"}')
                else:
                    assert reply.endswith(b'{"key":"%s"}' % key)
                writer.close()

    asyncio.run(scenario())
    turns: list[list[tuple[str, str]]] = []
    for event in events:
        if event[0] == "turn":
            turns.append([])
        else:
            turns[-1].append(event)
    assert max(len(events) for events in turns) > 2  # some turn read several connections
    for events in turns:
        framed = [key for kind, key in events if kind == "frame"]
        answered = [key for kind, key in events if kind == "answer"]
        assert events == [("frame", key) for key in framed] + [("answer", key) for key in framed]
        assert answered == framed


def test_a_client_that_closes_its_side_after_its_requests_reads_every_answer() -> None:
    """The end of the client's stream arrives with its requests, before they are answered."""

    async def scenario() -> None:
        async with serving() as site:
            reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
            writer.write(REQUEST % b"f" + REQUEST % b"g")
            writer.write_eof()
            assert (await answer_of(reader)).endswith(b'{"key":"f"}')
            assert (await answer_of(reader)).endswith(b'{"key":"g"}')
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()

    asyncio.run(scenario())


def test_an_unfinished_request_is_answered_408_however_slowly_it_trickles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fast_path, "SWEEP_S", 0.05)

    async def scenario() -> None:
        async with serving_bodies(max_buffered=1_000_000) as site:
            started = asyncio.get_running_loop().time()
            head_only = await asyncio.open_connection("127.0.0.1", site.port)
            head_only[1].write(REQUEST[:30])
            trickle = await asyncio.open_connection("127.0.0.1", site.port)
            trickle[1].write(with_body(50))
            reply = asyncio.ensure_future(answer_of(trickle[0]))
            while not reply.done():  # a byte every 20 ms: never idle, never finished
                trickle[1].write(b" ")
                await asyncio.sleep(0.02)
            for answered in (reply.result(), await answer_of(head_only[0])):
                assert answered.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answered
                assert b"Connection: close\r\n" in answered
            for reader, _ in (head_only, trickle):
                assert await asyncio.wait_for(reader.read(), 2) == b""
            # REQUEST_SWEEPS sweeps of 50 ms, not the 75 s idle timeout.
            assert asyncio.get_running_loop().time() - started < 2
            assert site.buffered == 0

    asyncio.run(scenario())


def test_a_client_still_sending_after_a_408_reads_the_408_not_a_reset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The refused connection is half-closed and drained, not closed under the client's feet:
    bytes it still sends would be answered with a reset, which throws away the 408 unread."""
    monkeypatch.setattr(fast_path, "SWEEP_S", 0.05)

    async def scenario() -> None:
        async with serving_bodies(max_buffered=1_000_000) as site:
            reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
            writer.write(with_body(50))
            loop = asyncio.get_running_loop()
            until = loop.time() + fast_path.REQUEST_SWEEPS * 0.05 + 0.5  # well past the 408
            while loop.time() < until:
                writer.write(b" ")
                await asyncio.sleep(0.02)
            answered = await asyncio.wait_for(reader.read(), 5)
            assert answered.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answered
            writer.close()

    asyncio.run(scenario())


def test_unfinished_requests_over_the_budget_are_answered_503() -> None:
    async def scenario() -> None:
        async with serving_bodies(max_buffered=10_000) as site:
            first = await asyncio.open_connection("127.0.0.1", site.port)
            first[1].write(with_body(8_000) + b"{" + b" " * 5_999)
            await until(lambda: site.buffered > 6_000)
            second = await asyncio.open_connection("127.0.0.1", site.port)
            second[1].write(with_body(8_000) + b"{" + b" " * 5_999)
            refused = await answer_of(second[0])
            assert refused.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), refused
            assert refused.endswith(
                b'"errorDetails":"the server holds too many unfinished requests: retry"}'
            )
            # The first one was held, and is answered once its body is complete.
            first[1].write(b" " * 1_999 + b"}")
            assert (await answer_of(first[0])).endswith(b'{"key":"f"}')
            assert site.buffered == 0
            first[1].close()
            second[1].close()

    asyncio.run(scenario())


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for `condition`, a state of the site that no event announces."""
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def aiohttp_same_answer(request: web.Request) -> web.Response:
    """What `answer` answers, from aiohttp: the two paths must then answer alike."""
    await request.read()
    if bearer(request) != "k":
        return await aiohttp_answer(request)
    return web.Response(body=b'{"key":"%s"}' % request.match_info["key"].encode())


REQUEST_LINES = [
    b"POST /ofrep/v1/evaluate/flags/f HTTP/1.1",
    b"POST /ofrep/v1/evaluate/flags/f HTTP/1.0",
    b"GET /ofrep/v1/evaluate/flags/f HTTP/1.1",
]
# A head the fast path answers is made of these; each test drops some and adds odd ones.
USUAL_LINES = [b"Host: t", b"Authorization: Bearer k", b"Content-Length: 2"]
ODD_LINES = [
    b"Host: u",
    b"Authorization: Bearer x",
    b"X-API-Key: k",
    b"Content-Length: 02",
    b"User-Agent: a",
    b"Content-Type: application/json",
    b"Connection: close",
    b"X-Pad: " + b"a" * 4_000,
    b"X-Pad: " + b"a" * 8_200,
    b"\r\n".join(b"X-%d: v" % i for i in range(130)),
    b"Sec-WebSocket-Key1: x",
    b"Content-Encoding: identity",
    b"X-Control: a\x01b",
    b"X-Null: a\x00b",
    b"X-High: \xff",
    b"X-Empty:",
    b" folded",
    b"Bad Name: v",
]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_the_fast_path_answers_any_head_as_aiohttp_alone_does(data: st.DataObject) -> None:
    """Whatever the head, the fast path's answer is the one aiohttp gives without it: it
    answers only heads aiohttp takes, and aiohttp answers the rest (issue 8, item 13)."""
    usual = [line for line in USUAL_LINES if data.draw(st.integers(0, 4), label=line.decode())]
    odd = data.draw(st.lists(st.sampled_from(ODD_LINES), max_size=3), label="odd")
    lines = data.draw(st.permutations(usual + odd), label="lines")
    ends = data.draw(st.lists(st.sampled_from([b"\r\n"] * 9 + [b"\n"]), min_size=len(lines) + 1))
    request_line = data.draw(st.sampled_from(REQUEST_LINES), label="request line")
    head = request_line + b"\r\n"
    head += b"".join(line + end for line, end in zip(lines, ends, strict=False)) + ends[-1]
    # One request only: aiohttp drops a whole read it cannot parse, a good request before the
    # bad bytes included, where the fast path answers that request first.
    framed = any(line.startswith(b"Content-Length") for line in lines)
    request = head + b"{}" if framed else head

    async def both() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        app = web.Application()
        app.router.add_post("/ofrep/v1/evaluate/flags/{key}", aiohttp_same_answer)
        runner = web.AppRunner(app)
        await runner.setup()
        fast = FastPathSite(
            runner, "127.0.0.1", 0, answer=answer, admits=admits, max_body=1024, metrics=METRICS
        )
        alone = QuietSite(runner, "127.0.0.1", 0, metrics=METRICS)
        await fast.start()
        await alone.start()
        try:
            return await status_and_body(fast.port, request), await status_and_body(
                alone.port, request
            )
        finally:
            await runner.cleanup()

    ours, theirs = asyncio.run(both())
    assert ours == theirs, head


async def status_and_body(port: int, request: bytes) -> tuple[int, bytes]:
    """The first answer's status and body; (0, b"") when the server closed without one."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        try:
            answered = await answer_of(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return 0, b""
        return int(answered.split()[1]), answered.partition(b"\r\n\r\n")[2]
    finally:
        writer.close()


BULK = (
    b"POST /ofrep/v1/evaluate/flags HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer k\r\n"
    b"Content-Length: %d\r\n%s\r\n%s"
)


def bulk_answer(
    token: str | None, if_none_match: str | None, query: bytes, body: bytes
) -> tuple[int, bytes, str | None] | None:
    """429 for `shed`, 304 when the tag matches, a 500 for `boom`, else declined."""
    if body == b"boom":
        raise RuntimeError("an engine bug")
    if body == b"shed":
        return 429, b'{"errorCode":"GENERAL"}', None
    if if_none_match == '"7"':
        return 304, b"", '"7"'
    if body == b"{}":
        return 200, b'{"flags":[]}', '"7"'
    return None


def test_bulk_answers_carry_their_headers_and_a_raising_one_is_a_500() -> None:
    async def scenario() -> None:
        async with site_with(
            [web.post("/ofrep/v1/evaluate/flags", aiohttp_answer)],
            answer=answer,
            admits=admits,
            max_body=1024,
            metrics=METRICS,
            bulk_answer=bulk_answer,
        ) as site:
            reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
            reply = await exchange(reader, writer, BULK % (2, b"", b"{}"))
            assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and b'ETag: "7"\r\n' in reply
            assert reply.endswith(b'\r\n\r\n{"flags":[]}') and b"Server:" not in reply
            writer.write(BULK % (2, b'If-None-Match: "7"\r\n', b"{}"))
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 304 Not Modified\r\n") and b'ETag: "7"' in head
            assert b"Content-Length" not in head
            shed = await exchange(reader, writer, BULK % (4, b"Connection: close\r\n", b"shed"))
            assert shed.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
            assert b"Retry-After: 1\r\n" in shed and b"Connection: close\r\n" in shed
            assert await asyncio.wait_for(reader.read(), 2) == b""
            reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
            boom = await exchange(reader, writer, BULK % (4, b"", b"boom"))
            assert boom.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
            assert boom.endswith(b'{"errorDetails":"internal error while evaluating"}')
            assert await asyncio.wait_for(reader.read(), 2) == b""
            reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
            declined = await exchange(reader, writer, BULK % (2, b"", b"[]"))
            assert declined.endswith(b'"by": "aiohttp", "key": null}')
            writer.close()

    asyncio.run(scenario())
