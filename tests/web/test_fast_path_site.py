"""`FastPathSite` in process, on a real socket with a real aiohttp runner behind it.

What a worker cannot show quickly: idle connections are closed (the sweep runs every 15 s in
production, 50 ms here), stopping the site closes the connections it still holds, and an
`Answer` that raises becomes a 500 that closes the connection instead of killing it silently.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from app.web import fast_path
from app.web.fast_path import FastPathSite

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
async def serving() -> AsyncIterator[FastPathSite]:
    app = web.Application()
    app.router.add_post("/ofrep/v1/evaluate/flags/{key}", aiohttp_answer)
    app.router.add_get("/other", aiohttp_answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = FastPathSite(runner, "127.0.0.1", 0, answer=answer, admits=admits, max_body=1024)
    await site.start()
    try:
        yield site
    finally:
        await runner.cleanup()


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
