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
from faust.web import View

from app.control.changes import valid_key
from app.experiments.exposures import Pending, exposure_id
from app.infra import metrics
from app.main import exposure_sink, faust_app, live_flags, settings
from app.web.admin import read_json, recovering
from app.web.auth import sdk_environment
from app.web.responses import error, ok

MAX_ITEMS = 1000
MAX_TEXT = 256
# How far ahead of this worker's clock an SDK's timestamp may be (clock skew), in seconds.
# Unbounded, 1e308 passed and the exposure producer's int(seconds * 1000) crashed the worker.
MAX_AHEAD_S = 86_400


def check_item(
    environment: str, index: int, item: Any, now: float
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
    if problems:
        return problems
    assert live is not None
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


async def produced(exposures: list[Pending]) -> bool:
    """Whether the broker acknowledged every one of `exposures` within the write timeout."""
    try:
        return await asyncio.wait_for(exposure_sink.produce(exposures), settings.write_timeout_s)
    except TimeoutError:
        return False


@faust_app.page("/api/v1/exposures")
class Exposures(View):
    async def post(self, request: web.Request) -> web.StreamResponse:
        environment = sdk_environment(request, settings)
        if environment is None:
            return error(401, "UNAUTHORIZED", "an SDK key is required")
        if unready := await recovering():
            return unready
        body = await read_json(request)
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
            checked = check_item(environment, index, item, now)
            if isinstance(checked, list):
                rejected.append({"index": index, "problems": checked})
            else:
                accepted.append(checked)
        if rejected:
            metrics.EXPOSURES.labels("rejected").inc(len(rejected))
        # Answered once the broker has them: an acknowledged exposure is never lost.
        if accepted and not await produced(accepted):
            message = "the exposures could not be produced in time; send them again"
            return error(503, "UNAVAILABLE", message, headers={"Retry-After": "1"})
        return ok({"accepted": len(accepted), "rejected": rejected}, status=202)
