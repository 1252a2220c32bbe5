"""JSON responses of the admin API, and the one place errors get their shape."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from app.infra.records import dumps

__all__ = ["error", "ok"]


def ok(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=dumps(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error(
    status: int,
    code: str,
    message: str,
    problems: Iterable[Mapping[str, Any]] = (),
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """`{"error": {"code", "message", "problems": [{"path", "message"}], ...}}` with `status`."""
    body = {"error": {"code": code, "message": message, "problems": list(problems), **extra}}
    return ok(body, status, headers)
