"""What a request carries, read one way for every endpoint: body, version numbers, text.

`read_body` reads the WHOLE body, however it arrives (in several TCP segments, or chunked),
up to a limit: `request.content.read(n)` returns what has arrived so far, which cut a large
or slowly sent body short and made it "not JSON". `read_json` adds `app.infra.json_input`'s strict,
depth-bounded parse. Each surface (admin API, OFREP) gives the refusal its own error shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from app.infra.json_input import Unacceptable, parse_json

__all__ = [
    "Refused",
    "decode_body",
    "last_event_id",
    "not_utf8",
    "parse_version",
    "read_body",
    "read_json",
]

# A version or sequence number as clients send it back: ASCII digits, within a signed 64 bits.
# `str.isdigit()` accepts "²" and `int()` refuses more than 4300 digits: both were 500s.
VERSION: Final = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a body was not read: too large (413) or not acceptable JSON (400)."""

    status: int
    message: str
    too_deep: bool = False


def too_large(limit: int) -> Refused:
    return Refused(413, f"the body may have at most {limit} bytes")


async def read_body(request: web.Request, limit: int) -> bytes | Refused:
    """Every byte of the body, or a 413 refusal as soon as it exceeds `limit` bytes."""
    if (request.content_length or 0) > limit:
        return too_large(limit)
    content = request.content
    chunks: list[bytes] = []
    size = 0
    while chunk := await content.readany():  # b"" only at the end of the body
        size += len(chunk)
        if size > limit:
            return too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: web.Request, limit: int) -> Any:
    """The body as JSON (`app.infra.json_input.parse_json`), or a `Refused`."""
    raw = await read_body(request, limit)
    if isinstance(raw, Refused):
        return raw
    return decode_body(raw)


def decode_body(raw: bytes) -> Any:
    """`raw` as JSON, or a 400 `Refused` that says why not."""
    value = parse_json(raw)
    if isinstance(value, Unacceptable):
        return Refused(400, f"the body is {value.message}", value.too_deep)
    return value


def parse_version(text: str | None) -> int | None:
    """A version or sequence number sent by a client (see VERSION), or None."""
    if text is None:
        return None
    text = text.strip()
    return int(text) if VERSION.fullmatch(text) else None


def not_utf8(*headers: tuple[str, str | None]) -> str | None:
    """Which of the (name, value) headers is not UTF-8 text, as a message; None if all are.

    aiohttp keeps undecodable header bytes as surrogates, which no record can carry: a change
    with such an actor could not be produced, and was a 500.
    """
    for name, value in headers:
        try:
            (value or "").encode()
        except UnicodeEncodeError:
            return f"{name} must be UTF-8 text"
    return None


def last_event_id(request: web.Request) -> int | Refused | None:
    """The event id a reconnecting stream client saw last (`Last-Event-ID`, or
    `?last_event_id` for clients that cannot set headers): None for a new client."""
    text = (
        request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or ""
    ).strip()
    if not text:
        return None
    seen = parse_version(text)
    if seen is None:
        message = "Last-Event-ID (or ?last_event_id) must be an event id: up to 18 digits"
        return Refused(400, message)
    return seen
