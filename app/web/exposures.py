"""`POST /api/v1/exposures`: exposures from SDKs that evaluate flags themselves.

The SDK key selects the environment. Each item is checked on its own (the flag exists, the
variant is one of its variants, the targeting key is there), so one bad item is reported by
index while the rest are produced, exactly like exposures of server-side evaluations.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from app.evaluation.live_flags import LiveFlags
from app.experiments.exposures import ExposureSink, Pending, exposure_id
from app.infra.keys import valid_key
from app.infra.metrics import Metrics
from app.infra.settings import Settings
from app.web.admin_answers import not_ready, read_json
from app.web.auth import Credentials
from app.web.responses import error, ok
from tables.replication import FlagReplication

__all__ = ["ExposuresApi", "check_item"]

MAX_ITEMS = 1000
MAX_TEXT = 256
# How far ahead of this worker's clock an SDK's timestamp may be (clock skew), in seconds.
# Unbounded, 1e308 passed and the exposure producer's int(seconds * 1000) crashed the worker.
MAX_AHEAD_S = 86_400


def check_item(
    live_flags: LiveFlags, environment: str, index: int, item: Any, now: float
) -> Pending | list[dict[str, str]]:
    """The exposure an item describes, or its problems (paths into the request body)."""
    at = f"$.exposures[{index}]"
    if not isinstance(item, dict):
        return [{"path": at, "message": "must be an object"}]
    problems = []

    def text(name: str) -> str:
        value = item.get(name)
        if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
            problems.append(
                {"path": f"{at}.{name}", "message": f"must be a string of 1-{MAX_TEXT} characters"}
            )
            return ""
        return value

    key, variant, targeting_key = text("flag"), text("variant"), text("targeting_key")
    live = live_flags.get(environment, key) if key and valid_key(key) else None
    if key and live is None:
        problems.append({"path": f"{at}.flag", "message": f"no flag {key!r} in {environment!r}"})
    elif (
        live is not None and live.flag is not None and variant and variant not in live.flag.variants
    ):
        problems.append({"path": f"{at}.variant", "message": f"{key!r} has no variant {variant!r}"})
    version = item.get("flag_version", live.version if live else 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        problems.append({"path": f"{at}.flag_version", "message": "must be a positive integer"})
    timestamp = item.get("timestamp", now)
    if (
        not isinstance(timestamp, int | float)
        or isinstance(timestamp, bool)
        or not 0 < timestamp <= now + MAX_AHEAD_S
    ):
        message = f"must be unix seconds, at most {MAX_AHEAD_S} s ahead of the server's clock"
        problems.append({"path": f"{at}.timestamp", "message": message})
    ident = item.get("exposure_id") or exposure_id()
    if not isinstance(ident, str) or len(ident) > MAX_TEXT:
        problems.append(
            {"path": f"{at}.exposure_id", "message": f"must be a string of 1-{MAX_TEXT} characters"}
        )
    if problems or live is None:  # no live flag is always one of the problems (above)
        return problems
    experiment = live.experiment or key
    return (
        environment,
        key,
        variant,
        version,
        targeting_key,
        float(timestamp),
        "sdk",
        ident,
        experiment,
    )


class ExposuresApi:
    """`POST /api/v1/exposures`, produced through this worker's exposure sink."""

    def __init__(
        self,
        settings: Settings,
        credentials: Credentials,
        live_flags: LiveFlags,
        replication: FlagReplication,
        sink: ExposureSink,
        metrics: Metrics,
    ) -> None:
        self.rejected = metrics.exposures.labels("rejected")
        self.max_body = settings.max_body_bytes
        self.write_timeout_s = settings.write_timeout_s
        self.credentials = credentials
        self.live_flags = live_flags
        self.replication = replication
        self.sink = sink

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/api/v1/exposures", self.post)]

    async def produced(self, exposures: list[Pending]) -> bool:
        """Whether the broker acknowledged every one of `exposures` within the write timeout."""
        try:
            return await asyncio.wait_for(self.sink.produce(exposures), self.write_timeout_s)
        except TimeoutError:
            return False

    async def post(self, request: web.Request) -> web.Response:
        environment = self.credentials.sdk_environment(request)
        if environment is None:
            return error(401, "UNAUTHORIZED", "an SDK key is required")
        if unready := await not_ready(self.replication):
            return unready
        body = await read_json(request, self.max_body)
        if isinstance(body, web.Response):
            return body
        items = body.get("exposures") if isinstance(body, dict) else None
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_ITEMS:
            message = f'the body is {{"exposures": [...]}} with 1-{MAX_ITEMS} items'
            return error(400, "BAD_REQUEST", message)
        now = time.time()
        accepted: list[Pending] = []
        rejected = []
        for index, item in enumerate(items):
            checked = check_item(self.live_flags, environment, index, item, now)
            if isinstance(checked, list):
                rejected.append({"index": index, "problems": checked})
            else:
                accepted.append(checked)
        if rejected:
            self.rejected.inc(len(rejected))
        # Answered once the broker has them: an acknowledged exposure is never lost.
        if accepted and not await self.produced(accepted):
            message = "the exposures could not be produced in time; send them again"
            return error(503, "UNAVAILABLE", message, headers={"Retry-After": "1"})
        return ok({"accepted": len(accepted), "rejected": rejected}, status=202)
