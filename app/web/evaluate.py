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

from app.engine import ErrorCode, JsonObject, Reason, Resolution
from app.evaluation.evaluator import resolve
from app.evaluation.live_flags import BeyondHistory, LiveFlag, LiveFlags
from app.infra.settings import Settings
from app.web.admin_answers import API, check_keys, not_ready, read_json
from app.web.auth import Credentials
from app.web.responses import error, ok
from tables.flags import FlagTable
from tables.replication import FlagReplication

__all__ = ["EvaluateApi", "parse_at"]


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


class EvaluateApi:
    """`POST /api/v1/environments/{env}/evaluate`, from this worker's table and history."""

    def __init__(
        self,
        settings: Settings,
        credentials: Credentials,
        flags: FlagTable,
        live_flags: LiveFlags,
        replication: FlagReplication,
    ) -> None:
        self.max_body = settings.max_body_bytes
        self.history_depth = settings.history_depth
        self.credentials = credentials
        self.flags = flags
        self.live_flags = live_flags
        self.replication = replication

    def routes(self) -> list[web.RouteDef]:
        return [web.post(API + "/{env}/evaluate", self.evaluate)]

    def resolve_at(
        self, environment: str, key: str, context: JsonObject, when: float | None
    ) -> tuple[LiveFlag | None, Resolution]:
        live = (
            self.live_flags.get(environment, key)
            if when is None
            else self.live_flags.at(environment, key, when)
        )
        if isinstance(live, BeyondHistory):
            message = (
                f"the table keeps {self.history_depth} versions of {key!r}; none was live then"
            )
            return None, Resolution(None, None, Reason.ERROR, ErrorCode.GENERAL, message)
        return live, resolve(live, key, context, time.time() if when is None else when)

    async def evaluate(self, request: web.Request) -> web.Response:
        env = request.match_info["env"]
        # Credentials first: a caller without them learns nothing, not even which keys are valid.
        denied = None
        if not self.credentials.may_read_environment(request, env):
            message = "a read token or this environment's SDK key is required"
            denied = error(401, "UNAUTHORIZED", message)
        denied = denied or check_keys(env) or await not_ready(self.replication)
        if denied:
            return denied
        body = await read_json(request, self.max_body)
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
        if problems or isinstance(when, str):  # a str `when` is one of the problems
            return error(400, "INVALID_CONTEXT", "invalid evaluation request", problems)
        results = []
        for key in self.flags.keys(env) if keys is None else keys:
            live, resolution = self.resolve_at(env, key, context, when)
            if keys is None and live is None and resolution.error_code is ErrorCode.FLAG_NOT_FOUND:
                continue  # a flag that did not exist then is no answer to "all flags"
            results.append(
                {
                    "key": key,
                    "value": resolution.value,
                    "variant": resolution.variant,
                    "reason": resolution.reason.value,
                    "error_code": resolution.error_code.value if resolution.error_code else None,
                    "error_message": resolution.error_message,
                    "version": live.version if live else None,
                }
            )
        return ok({"environment": env, "at": when, "flags": results})
