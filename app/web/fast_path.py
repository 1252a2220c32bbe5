"""HTTP/1.1 in front of aiohttp for the requests that must be cheap: OFREP evaluations.

A server-side OpenFeature SDK sends one `POST /ofrep/v1/evaluate/flags/{key}` per flag
evaluation, so this request is nearly all of a worker's HTTP load. aiohttp spends ~40 µs of
CPU around every handler here (a bare aiohttp app answering a constant body costs ~45 µs per
request), several times the evaluation itself, which capped the aiohttp handler at 0.62 of a
bare aiohttp app (benchmarks/RESULTS.md).

So each connection starts on `FastPath`. It frames requests itself (the head up to the blank
line, parsed and checked by llhttp through httptools as it arrives, then Content-Length bytes
of body) and answers every complete request that is a plain HTTP/1.1 single-flag evaluation by
calling its `Answer` synchronously (a bulk evaluation, `POST /ofrep/v1/evaluate/flags`, by its
`BulkAnswer`: ~1 ms of evaluation each, but under a spike of them aiohttp's 429 alone cost 4x
the fast path's, so a worker that shed them through aiohttp still could not keep up), the
requests of every connection read in one turn of the event loop back to back, then their
answers (`Connections.answer_ready` says why). The first request that is anything else (another
route, chunked bodies, `Expect`, HTTP/1.0, a head llhttp or aiohttp refuses, a body over the
limit), that has no SDK key `Admits` (checked at the head, before any body is read), or that
the `Answer` declines (a body that is not a context, a worker still recovering; for bulk also a
re-fetch naming a version not yet applied, an environment still compiling: the waits aiohttp's
handler makes) is handed to aiohttp with every byte after it, and the connection is an ordinary
aiohttp connection from then on. Requests are answered in arrival order, so pipelining keeps
its order, and aiohttp's handlers write every other answer, so the two paths differ only in
speed.

What a client can make the fast path hold is bounded: one unfinished request per connection
(a head of at most `MAX_HEAD_BYTES`, a body of at most the body limit), `MAX_BUFFERED_BYTES`
of unfinished requests per worker (a request that would go over is answered 503), and 4-5 s
to finish a request (`REQUEST_SWEEPS`, then 408). A client that does not read its answers is
not read, nor answered, until it catches up (`pause_writing`), and that pause is carried to
aiohttp at a hand-off.

Past that, what a worker holds is time: the `Answer` sheds a share of the requests with a 429
and `Retry-After` when the event loop lags (`app.web.overload`), so under a spike the wait of
the answered ones stays bounded instead of growing with the kernel's queues.

Connections aiohttp serves (handed off, or all of them without the fast path) are
`QuietRequestHandler`s: a request aiohttp cannot parse is answered with a fixed 400 and logged
without its bytes, which may hold a token or an SDK key.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Final, cast

import httptools
from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest
from aiohttp.web_runner import BaseRunner, BaseSite, TCPSite
from faust.web.drivers import aiohttp as faust_aiohttp
from prometheus_client import Counter

from app.infra.keys import KEY_PATTERN
from app.infra.metrics import Metrics
from app.infra.records import dumps
from app.web.auth import token_of
from app.web.overload import RETRY_AFTER_S

__all__ = [
    "IDLE_SWEEPS",
    "REQUEST_SWEEPS",
    "SWEEP_S",
    "Admits",
    "Answer",
    "BulkAnswer",
    "FastPathSite",
    "FastPathWeb",
    "QuietSite",
    "parse_error_reason",
]

log = logging.getLogger(__name__)

Answer = Callable[[str | None, str, bytes], tuple[int, bytes] | None]
"""(SDK key or None, flag key, body) -> (status, JSON body); None lets aiohttp answer. A 429
(a shed request, `app.web.overload`) is sent with `Retry-After`."""
BulkAnswer = Callable[[str | None, str | None, bytes, bytes], tuple[int, bytes, str | None] | None]
"""(SDK key or None, If-None-Match or None, query string (after `?`, b"" without one), body)
-> (status, JSON body, ETag or None), every flag evaluated; None lets aiohttp answer. A 304
is sent without a body, a 429 with `Retry-After`."""
Admits = Callable[[str | None], bool]
"""Whether a credential (SDK key or None) may evaluate at all; False lets aiohttp answer
(401/403) as soon as the head has arrived, so a refused request's body is never buffered."""

# The single-flag route with a flag key as keys are made (`app.infra.keys.KEY_PATTERN`, which
# needs no percent-decoding and is never a dot segment); other targets go to aiohttp.
SINGLE_FLAG: Final = re.compile(
    rb"/ofrep/v1/evaluate/flags/(%s)" % KEY_PATTERN.pattern.strip("^$").encode()
)
# The bulk route, with its query string if any (a re-fetch names `flagConfigEtag` there).
EVERY_FLAG: Final = re.compile(rb"/ofrep/v1/evaluate/flags(?:\?([^#]*))?")
IF_NONE_MATCH: Final = b"if-none-match"  # the bulk route's; aiohttp reads the first one sent
# Largest head answered here, in bytes: aiohttp refuses a request line or a header field
# (name and value) over 8190 bytes (its max_line_size and max_field_size), so a head within
# 8190 bytes is within both; a longer one is aiohttp's to judge.
MAX_HEAD_BYTES: Final = 8190
# aiohttp refuses a request with more header fields than this (its max_headers).
MAX_HEADERS: Final = 128
# Every SWEEP_S seconds, one timer looks at every connection: an idle keep-alive connection
# is closed after IDLE_SWEEPS sweeps without a byte (75-76 s, aiohttp's usual keep-alive), a
# request still unfinished after REQUEST_SWEEPS sweeps is answered 408 and its connection
# closed (4-5 s, however slowly its bytes trickle in).
SWEEP_S: Final = 1.0
IDLE_SWEEPS: Final = 75
REQUEST_SWEEPS: Final = 5
# Seconds a refused connection keeps reading (and dropping) before it closes: see `_refuse`.
LINGER_S: Final = 2.0
# Bytes of unfinished requests the fast path holds per worker (every connection together); a
# connection that would take it over is answered 503 and closed. Whole requests are answered
# from the read that completes them and never count.
MAX_BUFFERED_BYTES: Final = 8 * 1024 * 1024
# Headers whose presence means the request is not a plain one (see the module docstring):
# aiohttp frames, decodes, upgrades or refuses (`Sec-WebSocket-Key1`) these itself.
NOT_PLAIN: Final = frozenset(
    {b"transfer-encoding", b"expect", b"upgrade", b"content-encoding", b"sec-websocket-key1"}
)
# Headers the fast path reads, and those aiohttp allows once (its parser's SINGLETON_HEADERS:
# a repeat is a 400 there): one bit each, so the ones a head has sent are one int, and any
# repeated is aiohttp's to judge.
ONCE: Final = {
    name: 1 << bit
    for bit, name in enumerate(
        (
            b"authorization",
            b"x-api-key",
            b"content-length",
            b"host",
            b"content-location",
            b"content-range",
            b"content-type",
            b"etag",
            b"max-forwards",
            b"server",
            b"user-agent",
        )
    )
}
AUTHORIZATION, API_KEY, CONTENT_LENGTH, HOST = (1, 2, 4, 8)  # HTTP/1.1 needs a Host in aiohttp

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


# An answer: status line, headers and JSON body; the last one on its connection says so.
ANSWER: Final = b"%sContent-Type: application/json\r\nContent-Length: %d\r\nDate: %s\r\n\r\n%s"
LAST_ANSWER: Final = ANSWER.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
# A shed request's answer (429) tells the client when to come back; the connection is kept.
RETRY_AFTER: Final = b"\r\nRetry-After: %d\r\n\r\n" % RETRY_AFTER_S
SHED_ANSWER: Final = ANSWER.replace(b"\r\n\r\n", RETRY_AFTER)
SHED_LAST_ANSWER: Final = LAST_ANSWER.replace(b"\r\n\r\n", RETRY_AFTER)
SHED: Final = 429
# A bulk answer's head; its headers after Date (ETag, Retry-After, Connection: close) vary.
BULK_HEAD: Final = b"%sContent-Type: application/json\r\nContent-Length: %d\r\nDate: %s\r\n"
NOT_MODIFIED: Final = 304
NOT_MODIFIED_HEAD: Final = b"HTTP/1.1 304 Not Modified\r\nDate: %s\r\n"  # no body, no length
BULK: Final = "ofrep_bulk"  # the bulk route's label in flagstream_http_requests_total


def header_text(value: bytes | None) -> str | None:
    """A header value as aiohttp decodes it (UTF-8, undecodable bytes kept as surrogates)."""
    return None if value is None else value.decode("utf-8", "surrogateescape")


class Connections:
    """What the fast connections of one site share: who they are, what they hold, and the
    connections whose reads wait for this turn's answers (`answer_ready`)."""

    __slots__ = (
        "accepted",
        "asked",
        "buffered",
        "bulk",
        "deferring",
        "handoffs",
        "max_buffered",
        "open",
        "ready",
        "requests",
        "shed",
    )

    def __init__(self, metrics: Metrics, max_buffered: int = MAX_BUFFERED_BYTES) -> None:
        self.open: set[FastPath] = set()
        self.ready: list[FastPath] = []  # read this turn, in arrival order, not yet answered
        # Single-flag requests framed this turn whose evaluation waits for the turn's others
        # (`answer_ready`): the connection, the request's key, token and body, and the read
        # holding it with where it starts (a decline hands the connection off from there).
        self.asked: list[tuple[FastPath, str, str | None, bytes, bytes, int]] = []
        self.deferring = False  # in `answer_ready`'s framing pass: evaluations may wait
        self.buffered = 0  # bytes of unfinished requests held, every connection together
        self.max_buffered = max_buffered
        self.accepted = metrics.fast_path_connections
        self.handoffs = metrics.fast_path_handoffs
        self.requests = metrics.http_requests
        self.shed = metrics.http_requests.labels("ofrep", str(SHED))  # pre-bound: spikes
        self.bulk: dict[int, Any] = {}  # the bulk route's counters by status, bound when met

    def count_bulk(self, status: int) -> None:
        """Count a bulk answer as aiohttp's middleware would (`app.web.http_metrics`)."""
        counter = self.bulk.get(status)
        if counter is None:
            counter = self.bulk[status] = self.requests.labels(BULK, str(status))
        counter.inc()

    def answer_ready(self) -> None:
        """Answer every connection read in this turn of the loop, then write every answer.

        Why not answer each read as it comes: between two reads the event loop makes a read
        and a write system call and runs its own code, and the evaluation's Python then runs
        2-3x slower than in a tight loop (its code and data are no longer in the CPU's
        caches; measured inside the worker: ~25 µs of CPU per answer against ~8 µs). Reads
        are cheap to keep (the bytes object each read made), so `data_received` only queues
        the connection, and this callback, scheduled once per turn, answers the queued reads
        back to back and then writes each connection's answers in one write: 11-13 µs per
        answer, worker CPU per request 116 -> 71 µs in the same loaded run
        (benchmarks/bench_ofrep.py). Arrival order is kept, across connections and within
        one; a read alone in its turn waits one loop turn more (microseconds). Under a spike
        the `Answer` bounds how long this runs: each turn answers for a time budget, then
        sheds the rest of its requests with a 429 in the same order (`app.web.overload`).

        The same holds one level down: framing a request (httptools, the head's checks) and
        evaluating one run different code over different data, and interleaved, each evicts
        the other from the CPU's caches. So the turn frames every read first, and a read's
        last request, when it is a plain single-flag evaluation that ends the read, is only
        noted (`asked`); then the noted requests are evaluated back to back, in arrival
        order, each answer after its connection's earlier ones (issue 11: the `Answer`'s
        own CPU 4.3 -> 2.7 µs in process, benchmarks/bench_ofrep_path.py). A noted request
        the `Answer` declines hands its connection to aiohttp from that request on, as if
        it had been answered in the framing pass.
        """
        ready, self.ready = self.ready, []
        self.deferring = True
        try:
            for connection in ready:
                connection.serve()
        finally:
            self.deferring = False
        asked, self.asked = self.asked, []
        for connection, key, token, body, read, start in asked:
            connection.answer_asked(key, token, body, read, start)
        for connection in ready:
            connection.flush()


class FastPath(asyncio.Protocol):
    """One connection, served here until its first request that aiohttp must answer."""

    __slots__ = (
        "_admits",
        "_admitted",
        "_admitted_headers",
        "_answer",
        "_api_key",
        "_authorization",
        "_bulk",
        "_bulk_answer",
        "_complete",
        "_fallback",
        "_fed",
        "_head_end",
        "_headers_done",
        "_held",
        "_idle",
        "_if_none_match",
        "_inbox",
        "_keep_alive",
        "_key",
        "_length",
        "_lingering",
        "_max_body",
        "_out",
        "_parser",
        "_pending",
        "_plain",
        "_query",
        "_seen",
        "_shared",
        "_token",
        "_transport",
        "_unfinished",
        "_url",
        "_writing_paused",
    )
    # Set by connection_made, before any other callback: only connected protocols are `open`.
    _transport: asyncio.Transport

    def __init__(
        self,
        fallback: Callable[[], RequestHandler],
        answer: Answer,
        admits: Admits,
        max_body: int,
        shared: Connections,
        bulk_answer: BulkAnswer | None = None,
    ) -> None:
        self._fallback = fallback
        self._answer = answer
        self._bulk_answer = bulk_answer
        self._admits = admits
        self._admitted: str | None = ""  # the last key admitted ("" never is one)
        # The Authorization and X-API-Key values that carried it (None: nothing admitted yet).
        self._admitted_headers: tuple[bytes | None, bytes | None] | None = None
        self._max_body = max_body
        self._shared = shared
        self._parser = httptools.HttpRequestParser(self)
        self._pending = bytearray()  # the unfinished request, from its first byte
        self._held = 0  # len(_pending) as counted in shared.buffered
        self._idle = 0  # sweeps without a byte
        self._unfinished = 0  # sweeps during which the same request stayed unfinished
        self._writing_paused = False
        self._lingering = False  # refused: what still comes in is dropped (`_refuse`)
        self._fed = 0  # bytes of the unfinished head already fed to the parser
        self._head_end = -1  # where the body of a head already parsed starts
        self._inbox: bytes | None = None  # read this turn, queued for `Connections.answer_ready`
        self._out: list[bytes] = []  # answers of this turn, written together by `flush`
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._authorization: bytes | None = None
        self._api_key: bytes | None = None
        self._length = -1  # no Content-Length yet
        self._plain = True
        self._seen = 0  # ONCE bits
        self._headers_done = False
        self._complete = False
        self._key = ""
        self._token: str | None = None
        self._keep_alive = True
        self._bulk = False
        self._query = b""
        self._if_none_match: bytes | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP server's transport reads and writes; uvloop's has asyncio.Transport's methods
        # without the base class, so an isinstance check would refuse it.
        self._transport = cast(asyncio.Transport, transport)
        self._shared.open.add(self)
        self._shared.accepted.inc()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inbox = None  # nobody to answer
        self._leave()

    def eof_received(self) -> None:
        """The client sent its last byte: answer what it sent before the transport closes."""
        self.serve()
        self.flush()

    def pause_writing(self) -> None:
        """The client reads slower than it asks: stop reading and answering until it catches
        up (`resume_writing`), so what it makes the worker hold is one read and its answers."""
        self._writing_paused = True
        self._transport.pause_reading()

    def resume_writing(self) -> None:
        """The client caught up: answer what was read meanwhile, then read again."""
        transport = self._transport
        self._writing_paused = False
        if self._pending:
            self._read(b"")
            self.flush()
        if not self._writing_paused and self in self._shared.open and not transport.is_closing():
            transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        """Queue the read for this turn's `Connections.answer_ready` (which says why)."""
        if self._lingering:
            return  # the rest of a refused request: dropped until the close
        self._idle = 0
        inbox = self._inbox
        if inbox is not None:
            self._inbox = inbox + data  # two reads in one turn: rare
            return
        self._inbox = data
        shared = self._shared
        if not shared.ready:
            asyncio.get_running_loop().call_soon(shared.answer_ready)
        shared.ready.append(self)

    def serve(self) -> None:
        """Answer what was read this turn (the answers wait in `_out` for `flush`)."""
        data = self._inbox
        if data is not None:
            self._inbox = None
            if not self._lingering:
                self._read(data)

    def flush(self) -> None:
        """Write the answers `serve` made, in one write."""
        out = self._out
        if out:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def _read(self, data: bytes) -> None:
        """Frame and answer the requests of `data` after what is pending, in order."""
        pending = self._pending
        buffer: bytes | bytearray = data
        if pending:
            pending += data
            buffer = pending
        size, start = len(buffer), 0  # `start`: the first byte of the request being read
        # A paused client (pause_writing, while answering) gets no more answers: the rest of
        # what it sent waits for resume_writing.
        while start < size and not self._writing_paused:
            if self._head_end < 0:
                reason = self._frame_head(buffer, start)
                if reason == "unfinished":
                    break
                if reason is not None:
                    return self._hand_off(buffer[start:], reason)
            body_start = start + self._head_end
            end = body_start + self._length
            if size < end:
                break  # the rest of the body is on its way
            body = data[body_start:end] if buffer is data else bytes(pending[body_start:end])
            if body and not self._feed(body):
                return self._hand_off(buffer[start:], "malformed")
            if end == size and buffer is data and self._can_wait():
                # The read's last request: evaluated with the turn's others (`answer_ready`).
                self._shared.asked.append((self, self._key, self._token, body, data, start))
                self._head_end, self._fed, self._unfinished = -1, 0, 0
                self._reset()
                return None
            if not self._complete or not (
                self._respond_bulk(body) if self._bulk else self._respond(self._key, body)
            ):
                return self._hand_off(buffer[start:], "declined")
            if not self._keep_alive:
                # Closed: what the client sent after `Connection: close` is void.
                return self._leave()
            self._head_end, self._fed, self._unfinished = -1, 0, 0
            self._reset()
            start = end
        if start < size or self._held:
            self._hold(buffer, start)

    def _can_wait(self) -> bool:
        """Whether the request just framed may be evaluated after the turn's framing: a
        complete single-flag request of a kept-alive connection holding nothing, read in
        `answer_ready`'s framing pass."""
        return (
            self._shared.deferring
            and self._complete
            and self._keep_alive
            and not self._bulk
            and not self._held
        )

    def answer_asked(
        self, key: str, token: str | None, body: bytes, read: bytes, start: int
    ) -> None:
        """Answer a request `_read` noted for the turn's evaluations (`answer_ready`); one the
        `Answer` declines hands the connection to aiohttp from its first byte (`read[start:]`,
        all of it: the request ended the read)."""
        self._token = token
        if not self._respond(key, body):
            self._hand_off(read[start:], "declined")
        elif not self._keep_alive:  # a 500: closed
            self._leave()
        self._token = None

    # httptools callbacks

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        bit = ONCE.get(name)
        if bit is None:
            if name in NOT_PLAIN:
                self._plain = False
            elif name == IF_NONE_MATCH and self._if_none_match is None:
                self._if_none_match = value
            return
        if self._seen & bit:
            self._plain = False
        self._seen |= bit
        if bit == AUTHORIZATION:
            self._authorization = value
        elif bit == API_KEY:
            self._api_key = value
        elif bit == CONTENT_LENGTH:
            if value.isdigit():
                self._length = int(value)
            else:
                self._plain = False  # anything but digits is aiohttp's to judge

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_message_complete(self) -> None:
        self._complete = True

    # framing and answering

    def _feed(self, data: bytes | bytearray) -> bool:
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return False  # an upgrade (or CONNECT) is aiohttp's too
        return True

    def _frame_head(self, buffer: bytes | bytearray, start: int) -> str | None:
        """Read the head of the request at `start`: None when it is one the fast path answers,
        "unfinished" while its end has not arrived, else why aiohttp must have the connection.

        An unfinished head is fed to llhttp as it arrives, so one llhttp refuses (a bare line
        feed, a binary preamble) goes to aiohttp at once instead of waiting for a blank line.
        """
        fed = self._fed
        end = buffer.find(b"\r\n\r\n", start + fed - 3 if fed > 3 else start)
        head_size = len(buffer) - start if end < 0 else end + 4 - start
        if head_size > MAX_HEAD_BYTES:
            return "other"
        if not self._feed(buffer[start + fed : start + head_size]):
            return "malformed"
        self._fed = head_size
        if end < 0:
            return "unfinished"
        # The request line and one line per header field.
        if buffer.count(b"\r\n", start, end + 2) > MAX_HEADERS + 1:
            return "other"
        reason = self._read_head()
        if reason is None:
            self._head_end = head_size
        return reason

    def _read_head(self) -> str | None:
        """Check a parsed head; None when it is a plain single-flag or bulk evaluation, else
        why not."""
        if not self._headers_done:
            return "malformed"
        parser = self._parser
        match = SINGLE_FLAG.fullmatch(self._url)
        if match is None and self._bulk_answer is not None:
            match = EVERY_FLAG.fullmatch(self._url)
            self._bulk = match is not None
        if (
            match is None
            or not self._plain
            or not self._seen & HOST
            or self._length > self._max_body
            or parser.get_method() != b"POST"
            or parser.get_http_version() != "1.1"
        ):
            return "other"
        # The credential headers as the client sent them: the same bytes as the request
        # before on this connection (an SDK's usual case) are the same key, admitted already.
        headers = (self._authorization, self._api_key)
        if headers != self._admitted_headers:
            token = token_of(header_text(headers[0]), header_text(headers[1]))
            if token != self._admitted:
                if not self._admits(token):
                    return "refused"
                self._admitted = token
            self._admitted_headers = headers
        self._length = max(self._length, 0)
        if self._bulk:
            self._query = match[1] or b""
        else:
            self._key = match[1].decode()
        self._token = self._admitted
        self._keep_alive = parser.should_keep_alive()
        return None

    def _respond(self, key: str, body: bytes) -> bool:
        """Write the answer of the request for flag `key` just read; False when aiohttp must
        answer it."""
        try:
            answered = self._answer(self._token, key, body)
        except Exception:
            log.exception("the fast path failed to evaluate %r", key)
            self._shared.requests.labels("ofrep", "500").inc()
            details = {"key": key, "errorDetails": "internal error while evaluating"}
            answered, self._keep_alive = (500, dumps(details)), False
        if answered is None:
            return False
        status, payload = answered
        if status == SHED:
            self._shared.shed.inc()
            if self._keep_alive:
                self._out.append(
                    SHED_ANSWER % (_status_lines[SHED], len(payload), http_date(), payload)
                )
            else:
                self._write_and_close(status, payload, SHED_LAST_ANSWER)
            return True
        if not self._keep_alive:
            self._write_and_close(status, payload)
            return True
        self._out.append(ANSWER % (_status_lines[status], len(payload), http_date(), payload))
        return True

    def _respond_bulk(self, body: bytes) -> bool:
        """Write the answer of the bulk request just read; False when aiohttp must answer it.

        Its headers are the aiohttp handler's (`app.web.ofrep.OfrepApi.evaluate_flags`): the
        ETag of the flags and context, `Retry-After` on a 429, a 304 without a body.
        """
        shared, bulk_answer = self._shared, self._bulk_answer
        if bulk_answer is None:
            return False  # not reached: only a connection with one reads bulk heads
        try:
            answered = bulk_answer(self._token, header_text(self._if_none_match), self._query, body)
        except Exception:
            log.exception("the fast path failed to evaluate every flag")
            details = {"errorDetails": "internal error while evaluating"}
            answered, self._keep_alive = (500, dumps(details), None), False
        if answered is None:
            return False
        status, payload, etag = answered
        shared.count_bulk(status)
        date = http_date()
        if status == NOT_MODIFIED:
            head = NOT_MODIFIED_HEAD % date
            payload = b""
        else:
            head = BULK_HEAD % (_status_lines[status], len(payload), date)
        if etag is not None:
            head += b"ETag: %s\r\n" % etag.encode()
        if status == SHED:
            head += b"Retry-After: %d\r\n" % RETRY_AFTER_S
        if not self._keep_alive:
            self._close_with(head + b"Connection: close\r\n\r\n" + payload)
            return True
        self._out.append(head + b"\r\n" + payload)
        return True

    def _write_and_close(self, status: int, payload: bytes, template: bytes = LAST_ANSWER) -> None:
        self._close_with(template % (_status_lines[status], len(payload), http_date(), payload))

    def _close_with(self, answer: bytes) -> None:
        """Write the connection's last answer after this turn's others, and close it."""
        self.flush()
        transport = self._transport
        transport.write(answer)
        if self._writing_paused:
            transport.abort()  # the client does not read: nothing would flush
        else:
            transport.close()

    def _refuse(self, status: int, details: str) -> None:
        """Answer the unfinished request with `status` (408, 503) and close the connection.

        The client may still be sending its request: closing at once would make the kernel
        answer its next bytes with a reset, which can discard the answer before the client
        reads it. So the answer is followed by a FIN, and what still comes in is read and
        dropped for LINGER_S before the close (aiohttp's lingering close does the same).
        """
        self._shared.requests.labels("ofrep", str(status)).inc()
        body: dict[str, str] = {"errorDetails": details}
        if self._key:
            body = {"key": self._key, **body}
        payload = dumps(body)
        self.flush()
        transport = self._transport
        if self._writing_paused or not transport.can_write_eof():
            self._write_and_close(status, payload)
        else:
            transport.write(
                LAST_ANSWER % (_status_lines[status], len(payload), http_date(), payload)
            )
            transport.write_eof()
            self._lingering = True
            asyncio.get_running_loop().call_later(LINGER_S, transport.close)
        self._leave()

    def _hold(self, buffer: bytes | bytearray, start: int) -> None:
        """Keep `buffer[start:]`, the unfinished request, within the worker's budget."""
        size = len(buffer) - start
        if size == 0:
            if self._held:
                self._pending = bytearray()
                self._release()
            return
        shared = self._shared
        if size > self._held and shared.buffered + size - self._held > shared.max_buffered:
            self._refuse(503, "the server holds too many unfinished requests: retry")
            return
        if buffer is self._pending:
            del self._pending[:start]
        else:
            self._pending = bytearray(memoryview(buffer)[start:])
        shared.buffered += size - self._held
        self._held = size

    def _release(self) -> None:
        self._shared.buffered -= self._held
        self._held = 0

    def _leave(self) -> None:
        """This connection is no longer the fast path's: forget it and what it held."""
        self._shared.open.discard(self)
        self._pending = bytearray()
        self._release()

    def _hand_off(self, pending: bytes | bytearray, reason: str) -> None:
        """Give the connection, from the first unanswered byte on, to aiohttp for good.

        asyncio remembers that it paused the protocol's writing (the client was not reading)
        and resumes whichever protocol the transport has when the client catches up, so
        aiohttp is told it starts paused: its handlers then wait before writing more.
        """
        self._shared.handoffs.labels(reason).inc()
        self.flush()  # the answers before it go first
        transport = self._transport
        pending = bytes(pending)
        self._leave()
        handler = self._fallback()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._writing_paused:
            handler.pause_writing()
        if not transport.is_reading():  # paused by pause_writing: aiohttp's flow control now
            transport.resume_reading()
        handler.data_received(pending)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def sweep(self) -> None:
        """One more second: close an idle connection, time out an unfinished request."""
        self._idle += 1
        if self._held and not self._writing_paused:  # paused, the wait is the client's
            self._unfinished += 1
            if self._unfinished >= REQUEST_SWEEPS:
                seconds = int(REQUEST_SWEEPS * SWEEP_S)
                self._refuse(408, f"the request was not complete within {seconds} s")
        elif self._idle >= IDLE_SWEEPS:
            if self._writing_paused:
                self._transport.abort()  # the client stopped reading: nothing would flush
            else:
                self._transport.close()


# Why a request aiohttp could not parse is refused, by the exception its parser raised. The
# parser's own message quotes the bytes it choked on, which may be a token or an SDK key, so
# it is never written to a client or a log; these fixed sentences are.
PARSE_ERRORS: Final[tuple[tuple[type[Exception], str], ...]] = (
    (LineTooLong, "a request line or header field is longer than 8190 bytes"),
    (BadHttpMethod, "the request method is not valid"),
    (BadStatusLine, "the request line is not valid HTTP/1.1"),
    (InvalidURLError, "the request target is not valid"),
    (InvalidHeader, "a header field is not valid"),
    (
        RequestPayloadError,
        "the request body does not match its headers (length, chunks or encoding)",
    ),
    (HttpProcessingError, "the request is not valid HTTP/1.1"),
)
# aiohttp messages that quote nothing the client sent, kept as they are more precise.
FIXED_MESSAGES: Final = re.compile(
    r"Missing 'Host' header in request\.|Duplicate '[A-Za-z-]+' header found\."
    r"|Too many headers received"
)


def parse_error_reason(exc: BaseException) -> str | None:
    """The fixed sentence for a request aiohttp could not parse; None for other errors."""
    if isinstance(exc, HttpProcessingError) and FIXED_MESSAGES.fullmatch(exc.message):
        return exc.message
    for kind, reason in PARSE_ERRORS:
        if isinstance(exc, kind):
            return reason
    return None


class QuietRequestHandler(RequestHandler):
    """aiohttp's connection handler, except that a request it cannot parse is answered with
    a fixed 400 and logged by its kind only (`PARSE_ERRORS`), never with its bytes."""

    __slots__ = ("unparsed",)
    unparsed: Counter  # `quiet_handlers` sets it: aiohttp builds the handler

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        reason = None if exc is None else parse_error_reason(exc)
        if reason is None:
            return super().handle_error(request, status, exc, message)
        self.logger.debug("bad request from %s: %s", request.remote, reason)
        if getattr(request, "_match_info", None) is None:  # routed: the middleware counted it
            self.unparsed.inc()
        if request.writer.output_size > 0:  # as aiohttp: an answer was started, none fits
            raise ConnectionError("a response was started before the request failed")
        response = web.Response(status=400, text=f"400 Bad Request: {reason}")
        response.force_close()
        return response


def quiet_handlers(server: web.Server, metrics: Metrics) -> Callable[[], QuietRequestHandler]:
    """A protocol factory like `server` itself, making `QuietRequestHandler`s.

    `web.Server.__call__` builds a `RequestHandler` from the options the runner gave it
    (`_kwargs`: access log, limits, timeouts); these are built from the same options.
    """
    loop = asyncio.get_running_loop()
    options: dict[str, Any] = server._kwargs
    unparsed = metrics.http_requests.labels("unparsed", "400")

    def handler() -> QuietRequestHandler:
        connection = QuietRequestHandler(server, loop=loop, **options)
        connection.unparsed = unparsed
        return connection

    return handler


class QuietSite(TCPSite):
    """aiohttp's TCP site, whose connections are `QuietRequestHandler`s."""

    __slots__ = ("_metrics",)

    def __init__(
        self,
        runner: BaseRunner,
        host: str | None,
        port: int,
        *,
        metrics: Metrics,
        ssl_context: Any = None,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self._metrics = metrics

    async def start(self) -> None:
        await BaseSite.start(self)  # registers the site with its runner, as TCPSite.start does
        server = self._runner.server
        if not isinstance(server, web.Server):
            raise TypeError(f"a site serves an aiohttp web.Server, not {type(server)}")
        await self._listen(quiet_handlers(server, self._metrics))

    async def _listen(self, protocol: Callable[[], asyncio.Protocol]) -> None:
        loop = asyncio.get_running_loop()
        # reuse_port: `flagstream worker --processes N` runs N workers on this one port, and
        # the kernel spreads connections between them (app/cli/processes.py).
        self._server = await loop.create_server(
            protocol,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_port=True,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]


class FastPathSite(QuietSite):
    """A `QuietSite` whose connections start on `FastPath`."""

    __slots__ = ("_admits", "_answer", "_bulk_answer", "_connections", "_max_body", "_sweeper")

    def __init__(
        self,
        runner: BaseRunner,
        host: str | None,
        port: int,
        *,
        answer: Answer,
        admits: Admits,
        max_body: int,
        metrics: Metrics,
        max_buffered: int = MAX_BUFFERED_BYTES,
        ssl_context: Any = None,
        bulk_answer: BulkAnswer | None = None,
    ) -> None:
        super().__init__(runner, host, port, metrics=metrics, ssl_context=ssl_context)
        self._answer = answer
        self._bulk_answer = bulk_answer
        self._admits = admits
        self._max_body = max_body
        self._connections = Connections(metrics, max_buffered)
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def buffered(self) -> int:
        """Bytes of unfinished requests the fast path holds now."""
        return self._connections.buffered

    async def start(self) -> None:
        await BaseSite.start(self)
        server = self._runner.server
        if not isinstance(server, web.Server):
            raise TypeError(f"a site serves an aiohttp web.Server, not {type(server)}")
        fallback = quiet_handlers(server, self._metrics)

        def connection() -> FastPath:
            return FastPath(
                fallback,
                self._answer,
                self._admits,
                self._max_body,
                self._connections,
                self._bulk_answer,
            )

        await self._listen(connection)
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        for connection in list(self._connections.open):
            connection.sweep()
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)

    async def stop(self) -> None:
        """Close the fast connections too: none is ever in the middle of an answer."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        await super().stop()
        for connection in list(self._connections.open):
            connection.close()


class FastPathWeb(faust_aiohttp.Web):
    """Faust's aiohttp web driver on a `QuietSite`, with `FastPath` in front once
    `answer_first` is called.

    Registered as the `flagstream` web driver (pyproject entry point `faust.web.drivers`), so
    `faust.App(web="flagstream://")` picks it.
    """

    answer: Answer | None = None
    bulk_answer: BulkAnswer | None = None
    admits: Admits | None = None
    max_body = 0
    metrics: Metrics | None = None

    def count_with(self, metrics: Metrics) -> None:
        """Count connections, hand-offs and the answers given here into `metrics`."""
        self.metrics = metrics

    def answer_first(
        self, answer: Answer, max_body: int, admits: Admits, bulk: BulkAnswer | None = None
    ) -> None:
        """Answer single-flag evaluations with `answer`, and bulk ones with `bulk` when
        given, before aiohttp sees them; `admits` checks the credential at the head."""
        self.answer, self.max_body, self.admits = answer, max_body, admits
        self.bulk_answer = bulk

    def _new_transport_tcp(self) -> BaseSite:
        conf = self.app.conf
        if self.metrics is None:
            raise RuntimeError("count_with(metrics) before the site starts")
        if self.answer is None or self.admits is None:
            return QuietSite(
                self._runner,
                conf.web_bind,
                conf.web_port,
                metrics=self.metrics,
                ssl_context=conf.web_ssl_context,
            )
        return FastPathSite(
            self._runner,
            conf.web_bind,
            conf.web_port,
            answer=self.answer,
            admits=self.admits,
            max_body=self.max_body,
            metrics=self.metrics,
            ssl_context=conf.web_ssl_context,
            bulk_answer=self.bulk_answer,
        )
