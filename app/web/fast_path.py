"""HTTP/1.1 in front of aiohttp for the one request that must be cheap: one OFREP flag.

A server-side OpenFeature SDK sends one `POST /ofrep/v1/evaluate/flags/{key}` per flag
evaluation, so this request is nearly all of a worker's HTTP load. aiohttp spends ~40 µs of
CPU around every handler here (a bare aiohttp app answering a constant body costs ~45 µs per
request), several times the evaluation itself, which capped the aiohttp handler at 0.62 of a
bare aiohttp app (benchmarks/RESULTS.md).

So each connection starts on `FastPath`. It frames requests itself (the head up to the blank
line, parsed and checked by llhttp through httptools, then Content-Length bytes of body) and
answers every complete request that is a plain HTTP/1.1 single-flag evaluation by calling its
`Answer` synchronously. The first request that is anything else (another route, chunked
bodies, `Expect`, HTTP/1.0, a head llhttp rejects, a body over the limit) or that the `Answer`
declines (no or unknown SDK key, a body that is not a context, a worker still recovering) is
handed to aiohttp with every byte after it, and the connection is an ordinary aiohttp
connection from then on. Requests are answered in arrival order, so pipelining keeps its
order, and aiohttp's handlers write every other answer, so the two paths differ only in speed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Final

import httptools
from aiohttp import web
from aiohttp.web_runner import BaseRunner, BaseSite, TCPSite
from faust.web.drivers import aiohttp as faust_aiohttp

from app import metrics
from app.changes import KEY_PATTERN
from app.records import dumps
from app.web.auth import token_of

log = logging.getLogger(__name__)

Answer = Callable[[str | None, str, bytes], tuple[int, bytes] | None]
"""(SDK key or None, flag key, body) -> (status, JSON body); None lets aiohttp answer."""

# The single-flag route with a flag key as keys are made (`app.changes.KEY_PATTERN`, which
# needs no percent-decoding and is never a dot segment); other targets go to aiohttp.
SINGLE_FLAG: Final = re.compile(
    rb"/ofrep/v1/evaluate/flags/(%s)" % KEY_PATTERN.pattern.strip("^$").encode()
)
# Largest head answered here: aiohttp's own line limit. A longer one is aiohttp's to refuse.
MAX_HEAD_BYTES: Final = 8190
# Idle keep-alive connections are closed after IDLE_SWEEPS sweeps without a byte, every
# SWEEP_S: 75-90 s, like aiohttp's keepalive_timeout, with one timer for all connections.
SWEEP_S: Final = 15.0
IDLE_SWEEPS: Final = 5
# Headers whose presence means the request is not a plain one (see the module docstring).
NOT_PLAIN: Final = frozenset({b"transfer-encoding", b"expect", b"upgrade"})

_status_lines = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode())
    for status in HTTPStatus
}
_date: list[Any] = [0, b""]


def http_date() -> bytes:
    """The `Date` header's value, formatted once a second."""
    now = int(time.time())
    if now != _date[0]:
        _date[0], _date[1] = now, formatdate(now, usegmt=True).encode()
    date: bytes = _date[1]
    return date


def header_text(value: bytes | None) -> str | None:
    """A header value as aiohttp decodes it (UTF-8, undecodable bytes kept as surrogates)."""
    return None if value is None else value.decode("utf-8", "surrogateescape")


class FastPath(asyncio.Protocol):
    """One connection, served here until its first request that aiohttp must answer."""

    __slots__ = (
        "_answer",
        "_api_key",
        "_authorization",
        "_buffer",
        "_complete",
        "_connections",
        "_fallback",
        "_head_end",
        "_headers_done",
        "_idle",
        "_keep_alive",
        "_key",
        "_length",
        "_max_body",
        "_parser",
        "_plain",
        "_transport",
        "_url",
    )

    def __init__(
        self,
        fallback: web.Server,
        answer: Answer,
        max_body: int,
        connections: set[FastPath],
    ) -> None:
        self._fallback = fallback
        self._answer = answer
        self._max_body = max_body
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._buffer = b""
        self._idle = 0
        self._head_end = -1  # where the body of a head already parsed starts
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._authorization: bytes | None = None
        self._api_key: bytes | None = None
        self._length = -1  # no Content-Length yet
        self._plain = True
        self._headers_done = False
        self._complete = False
        self._key = ""
        self._keep_alive = True

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._connections.add(self)
        metrics.FAST_PATH_CONNECTIONS.inc()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)

    def pause_writing(self) -> None:
        """The client reads slower than it asks: stop reading until it catches up."""
        assert self._transport is not None
        self._transport.pause_reading()

    def resume_writing(self) -> None:
        assert self._transport is not None
        self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self._idle = 0
        buffer = self._buffer + data if self._buffer else data
        while buffer:
            if self._head_end < 0:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    # Too long, or ended by bare LFs (which llhttp refuses): aiohttp answers.
                    if len(buffer) > MAX_HEAD_BYTES or b"\n\n" in buffer:
                        return self._hand_off(buffer, "other")
                    break
                reason = self._read_head(buffer, end + 4)
                if reason is not None:
                    return self._hand_off(buffer, reason)
                self._head_end = end + 4
            start, end = self._head_end, self._head_end + self._length
            if len(buffer) < end:
                break  # the rest of the body is on its way
            body = buffer[start:end]
            if body and not self._feed(body):
                return self._hand_off(buffer, "malformed")
            if not self._complete or not self._respond(body):
                return self._hand_off(buffer, "declined")
            if not self._keep_alive:
                self._buffer = b""
                return None  # closed: what the client sent after `Connection: close` is void
            self._head_end = -1
            self._reset()
            buffer = buffer[end:]
        self._buffer = buffer

    # httptools callbacks

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"authorization":
            self._plain &= self._authorization is None
            self._authorization = value
        elif name == b"x-api-key":
            self._plain &= self._api_key is None
            self._api_key = value
        elif name == b"content-length":
            # One Content-Length of digits only; anything else is aiohttp's to judge.
            self._plain &= self._length < 0 and value.isdigit()
            self._length = int(value) if value.isdigit() else 0
        elif name in NOT_PLAIN:
            self._plain = False

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_message_complete(self) -> None:
        self._complete = True

    # framing and answering

    def _feed(self, data: bytes) -> bool:
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return False  # an upgrade (or CONNECT) is aiohttp's too
        return True

    def _read_head(self, buffer: bytes, end: int) -> str | None:
        """Parse one head; None when the request is a plain single-flag evaluation, else why not."""
        if not self._feed(buffer[:end]) or not self._headers_done:
            return "malformed"
        parser = self._parser
        match = SINGLE_FLAG.fullmatch(self._url)
        if (
            match is None
            or not self._plain
            or self._length > self._max_body
            or parser.get_method() != b"POST"
            or parser.get_http_version() != "1.1"
        ):
            return "other"
        self._length = max(self._length, 0)
        self._key = match[1].decode()
        self._keep_alive = parser.should_keep_alive()
        return None

    def _respond(self, body: bytes) -> bool:
        """Write the answer of the request just read; False when aiohttp must answer it."""
        try:
            token = token_of(header_text(self._authorization), header_text(self._api_key))
            answered = self._answer(token, self._key, body)
        except Exception:
            log.exception("the fast path failed to evaluate %r", self._key)
            metrics.HTTP_REQUESTS.labels("ofrep", "500").inc()
            details = {"key": self._key, "errorDetails": "internal error while evaluating"}
            answered, self._keep_alive = (500, dumps(details)), False
        if answered is None:
            return False
        status, payload = answered
        head = b"%sContent-Type: application/json\r\nContent-Length: %d\r\nDate: %s\r\n" % (
            _status_lines[status],
            len(payload),
            http_date(),
        )
        transport = self._transport
        assert transport is not None
        if self._keep_alive:
            transport.write(head + b"\r\n" + payload)
        else:
            transport.write(head + b"Connection: close\r\n\r\n" + payload)
            transport.close()
        return True

    def _hand_off(self, pending: bytes, reason: str) -> None:
        """Give the connection, from the first unanswered byte on, to aiohttp for good."""
        metrics.FAST_PATH_HANDOFFS.labels(reason).inc()
        transport = self._transport
        assert transport is not None
        self._connections.discard(self)
        self._buffer = b""
        handler = self._fallback()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if not transport.is_reading():  # paused by pause_writing: aiohttp's flow control now
            transport.resume_reading()
        handler.data_received(pending)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def idle_sweep(self) -> None:
        """One more sweep without a byte from the client; closes it after IDLE_SWEEPS."""
        self._idle += 1
        if self._idle >= IDLE_SWEEPS:
            self.close()


class FastPathSite(TCPSite):
    """aiohttp's TCP site, whose connections start on `FastPath`."""

    __slots__ = ("_answer", "_connections", "_max_body", "_sweeper")

    def __init__(
        self,
        runner: BaseRunner,
        host: str | None,
        port: int,
        *,
        answer: Answer,
        max_body: int,
        ssl_context: Any = None,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self._answer = answer
        self._max_body = max_body
        self._connections: set[FastPath] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        await BaseSite.start(self)  # registers the site with its runner, as TCPSite.start does
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert isinstance(server, web.Server)

        def connection() -> FastPath:
            return FastPath(server, self._answer, self._max_body, self._connections)

        self._server = await loop.create_server(
            connection, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]
        self._sweeper = loop.call_later(SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        for connection in list(self._connections):
            connection.idle_sweep()
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)

    async def stop(self) -> None:
        """Close the fast connections too: none is ever in the middle of an answer."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        await super().stop()
        for connection in list(self._connections):
            connection.close()


class FastPathWeb(faust_aiohttp.Web):
    """Faust's aiohttp web driver, with `FastPath` in front once `answer_first` is called.

    Registered as the `flagstream` web driver (pyproject entry point `faust.web.drivers`), so
    `faust.App(web="flagstream://")` picks it.
    """

    answer: Answer | None = None
    max_body = 0

    def answer_first(self, answer: Answer, max_body: int) -> None:
        """Answer single-flag evaluations with `answer` before aiohttp sees them."""
        self.answer, self.max_body = answer, max_body

    def _new_transport_tcp(self) -> BaseSite:
        if self.answer is None:
            site: BaseSite = super()._new_transport_tcp()
            return site
        return FastPathSite(
            self._runner,
            self.app.conf.web_bind,
            self.app.conf.web_port,
            answer=self.answer,
            max_body=self.max_body,
            ssl_context=self.app.conf.web_ssl_context,
        )
