"""Evaluation for people: what does (or did) this context get, with every flag's version.

`POST /api/v1/environments/{env}/evaluate` with an optional `at` answers "what did user X get
at 14:03?": each flag is evaluated with the version that was live at that moment (from the
flag history) and with `$flagd.timestamp` = `at`. A debugging and support tool, so it emits
no exposures and counts no evaluations: nobody was exposed to anything.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from aiohttp import web
from faust.web import View

from app.engine import ErrorCode, Reason, Resolution
from app.evaluation.evaluator import resolve
from app.evaluation.live_flags import BEYOND_HISTORY, BeyondHistory, LiveFlag
from app.main import faust_app, flag_table, live_flags, settings
from app.web.admin import API, check_keys, read_json, recovering
from app.web.auth import may_read_environment
from app.web.responses import error, ok


def parse_at(value: Any) -> float | str | None:
    """Unix seconds from a number or an ISO-8601 string; a message when it is neither."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return f"not an ISO-8601 time: {value!r}"
        if moment.tzinfo is None:
            return "an ISO-8601 time needs a UTC offset (e.g. 2026-11-25T14:03:00Z)"
        return moment.timestamp()
    return "must be unix seconds or an ISO-8601 string"


def resolve_at(
    environment: str, key: str, context: dict[str, Any], when: float | None
) -> tuple[LiveFlag | None, Resolution]:
    live = (
        live_flags.get(environment, key) if when is None else live_flags.at(environment, key, when)
    )
    if live is BEYOND_HISTORY:
        message = (
            f"the table keeps {settings.history_depth} versions of {key!r}; none was live then"
        )
        return None, Resolution(None, None, Reason.ERROR, ErrorCode.GENERAL, message)
    assert not isinstance(live, BeyondHistory)
    return live, resolve(live, key, context, time.time() if when is None else when)


@faust_app.page(API + "/{env}/evaluate")
class Evaluate(View):
    async def post(self, request: web.Request, env: str) -> web.StreamResponse:
        # Credentials first: a caller without them learns nothing, not even which keys are valid.
        denied = None
        if not may_read_environment(request, settings, env):
            message = "a read token or this environment's SDK key is required"
            denied = error(401, "UNAUTHORIZED", message)
        denied = denied or check_keys(env) or await recovering()
        if denied:
            return denied
        body = await read_json(request)
        if isinstance(body, web.Response):
            return body
        problems = []
        if not isinstance(body, dict):
            body = {}
            problems.append({"path": "$", "message": "must be an object"})
        context = body.get("context", {})
        if not isinstance(context, dict):
            problems.append({"path": "$.context", "message": "must be an object"})
        elif not isinstance(context.get("targetingKey", ""), str):  # as OFREP answers it
            problems.append({"path": "$.context.targetingKey", "message": "must be a string"})
        keys = body.get("flags")
        if keys is not None and not (
            isinstance(keys, list) and all(isinstance(k, str) for k in keys)
        ):
            problems.append({"path": "$.flags", "message": "must be a list of flag keys"})
        when = parse_at(body.get("at"))
        if isinstance(when, str):
            problems.append({"path": "$.at", "message": when})
        if problems:
            return error(400, "INVALID_CONTEXT", "invalid evaluation request", problems)
        assert not isinstance(when, str)
        results = []
        for key in flag_table.keys(env) if keys is None else keys:
            live, resolution = resolve_at(env, key, context, when)
            if keys is None and live is None and resolution.error_code is ErrorCode.FLAG_NOT_FOUND:
                continue  # a flag that did not exist then is no answer to "all flags"
            results.append(
                {
                    "key": key,
                    "value": resolution.value,
                    "variant": resolution.variant,
                    "reason": resolution.reason.value,
                    "errorCode": resolution.error_code.value if resolution.error_code else None,
                    "errorMessage": resolution.error_message,
                    "version": live.version if live else None,
                }
            )
        return ok({"environment": env, "at": when, "flags": results})
