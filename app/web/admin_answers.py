"""How the admin API answers, for every view under /api/v1: a flag version with its
bookkeeping and ETag, the keys and bodies it refuses, and the 503 of a worker still recovering.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from app.infra.keys import valid_key
from app.infra.records import AppliedChange
from app.web import inputs
from app.web.responses import error
from tables.replication import FlagReplication

__all__ = [
    "ACCESS",
    "API",
    "check_keys",
    "describe",
    "etag",
    "not_ready",
    "parse_if_match",
    "read_json",
]

API: Final = "/api/v1/environments"
ACCESS: Final = "/api/v1/access"  # what the caller's token may do


def describe(change: AppliedChange) -> dict[str, Any]:
    """A flag version with its bookkeeping: what history and write responses return."""
    return {
        "environment": change.environment,
        "flag": change.flag,
        "version": change.version,
        "seq": change.seq,
        "op": change.op.value,
        "updated_at": change.updated_at,
        "actor": change.actor,
        "change_id": change.change_id,
        "definition": change.definition,
    }


def etag(version: int) -> str:
    return f'"{version}"'


def parse_if_match(request: web.Request) -> int | web.Response | None:
    """The version `If-Match` names (None when absent), or a 400 response."""
    header = request.headers.get("If-Match")
    if header is None or header.strip() == "*":
        return None
    version = inputs.parse_version(header.strip().removeprefix("W/").strip('"'))
    if version is None:
        return error(400, "BAD_REQUEST", 'If-Match must be a flag version, e.g. "3"')
    return version


def check_keys(environment: str, flag: str | None = None) -> web.Response | None:
    for name, key in (("environment", environment), ("flag", flag)):
        if key is not None and not valid_key(key):
            return error(400, "BAD_REQUEST", f"invalid {name} key {key!r}")
    return None


async def read_json(request: web.Request, limit: int) -> Any | web.Response:
    """The request body as JSON (`app.web.inputs.read_json`), or the 413/400 response."""
    body = await inputs.read_json(request, limit)
    if not isinstance(body, inputs.Refused):
        return body
    if body.status == 413:
        return error(413, "PAYLOAD_TOO_LARGE", body.message)
    problems = [{"path": "$", "message": body.message}] if body.too_deep else []
    return error(400, "BAD_REQUEST", body.message, problems)


async def not_ready(replication: FlagReplication) -> web.Response | None:
    """503 while this worker's flag table has not caught up (after a short wait), else None:
    an answer from a partial table would call existing flags missing."""
    if await replication.wait_ready():
        return None
    message = "this worker's flag table is still recovering"
    return error(503, "NOT_READY", message, headers={"Retry-After": "1"})
