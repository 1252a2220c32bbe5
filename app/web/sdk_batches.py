"""What the SDK batch routes (`/api/v1/exposures`, `/api/v1/metric-events`) share.

An SDK posts `{"<field>": [...]}` with 1-1000 items under its SDK key, which selects the
environment. Each item is checked on its own and a bad one is reported by index with the
JSON paths of its problems while the rest are produced; the answer is 202
`{"accepted", "rejected"}` once the broker has every accepted record, 503 when it could not
take them in time (the SDK sends them again: each record carries its own id for dedupe).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Generic, TypeVar

from aiohttp import web
from prometheus_client import Counter

from app.experiments.record_sink import Channel
from app.infra.settings import Settings
from app.web.admin_answers import not_ready, read_json
from app.web.auth import Credentials
from app.web.responses import error, ok
from tables.replication import FlagReplication

__all__ = ["MAX_AHEAD_S", "MAX_ITEMS", "MAX_TEXT", "ItemCheck", "Problems", "SdkBatches"]

R = TypeVar("R")

MAX_ITEMS: Final = 1000
MAX_TEXT: Final = 256
# How far ahead of this worker's clock an SDK's timestamp may be (clock skew), in seconds.
# Unbounded, 1e308 passed and the exposure producer's int(seconds * 1000) crashed the worker.
MAX_AHEAD_S: Final = 86_400

Problems = list[dict[str, str]]


class ItemCheck:
    """The problems of one item of a batch, as paths under `$.<field>[<index>]`."""

    def __init__(self, at: str, item: Mapping[str, Any]) -> None:
        self.at = at
        self.item = item
        self.problems: Problems = []

    def problem(self, name: str, message: str) -> None:
        self.problems.append({"path": f"{self.at}.{name}", "message": message})

    def text(self, name: str) -> str:
        """A required string of 1-`MAX_TEXT` characters ("" and a problem otherwise)."""
        value = self.item.get(name)
        if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
            self.problem(name, f"must be a string of 1-{MAX_TEXT} characters")
            return ""
        return value

    def ident(self, name: str, make: Callable[[], str]) -> str:
        """An optional id of 1-`MAX_TEXT` characters, made by `make` when absent or empty."""
        value = self.item.get(name) or make()
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            self.problem(name, f"must be a string of 1-{MAX_TEXT} characters")
            return ""
        return value

    def timestamp(self, now: float) -> float:
        """Unix seconds, `now` when absent, at most `MAX_AHEAD_S` ahead of `now`."""
        value = self.item.get("timestamp", now)
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not 0 < value <= now + MAX_AHEAD_S
        ):
            message = f"must be unix seconds, at most {MAX_AHEAD_S} s ahead of the server's clock"
            self.problem("timestamp", message)
            return 0.0
        return float(value)


class SdkBatches(Generic[R]):
    """The POST of one SDK batch route: auth, the envelope, per-item checks, acknowledged
    production through a channel of the record sink."""

    def __init__(
        self,
        settings: Settings,
        credentials: Credentials,
        replication: FlagReplication,
        field: str,
        channel: Channel[R],
        outcomes: Counter,
    ) -> None:
        self.field = field
        self.channel = channel
        self.rejected = outcomes.labels("rejected")
        self.max_body = settings.max_body_bytes
        self.write_timeout_s = settings.write_timeout_s
        self.credentials = credentials
        self.replication = replication

    async def produced(self, records: list[R]) -> bool:
        """Whether the broker acknowledged every one of `records` within the write timeout."""
        try:
            return await asyncio.wait_for(self.channel.produce(records), self.write_timeout_s)
        except TimeoutError:
            return False

    async def post(
        self, request: web.Request, check: Callable[[str, int, Any, float], R | Problems]
    ) -> web.Response:
        """Answer a batch; `check(environment, index, item, now)` makes an item's record or
        says its problems."""
        environment = self.credentials.sdk_environment(request)
        if environment is None:
            return error(401, "UNAUTHORIZED", "an SDK key is required")
        if unready := await not_ready(self.replication):
            return unready
        body = await read_json(request, self.max_body)
        if isinstance(body, web.Response):
            return body
        items = body.get(self.field) if isinstance(body, dict) else None
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_ITEMS:
            message = f'the body is {{"{self.field}": [...]}} with 1-{MAX_ITEMS} items'
            return error(400, "BAD_REQUEST", message)
        now = time.time()
        accepted: list[R] = []
        rejected = []
        for index, item in enumerate(items):
            checked = check(environment, index, item, now)
            if isinstance(checked, list):
                rejected.append({"index": index, "problems": checked})
            else:
                accepted.append(checked)
        if rejected:
            self.rejected.inc(len(rejected))
        # Answered once the broker has them: an acknowledged record is never lost.
        if accepted and not await self.produced(accepted):
            message = f"the {self.field} could not be produced in time; send them again"
            return error(503, "UNAVAILABLE", message, headers={"Retry-After": "1"})
        return ok({"accepted": len(accepted), "rejected": rejected}, status=202)
