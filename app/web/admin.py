"""The admin API: flags of an environment as flagd JSON, written through `flag-changes`.

Reads come from this worker's table. Writes produce a command and wait (bounded) until this
worker's table holds the result, so a client that writes then reads the same worker sees its
write. Versions are ETags: `If-Match` makes a write conditional (409 when stale).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from faust.web import View

from app.control.changes import MAX_CHANGE_ID, STATES, valid_key
from app.control.outcomes import BrokerUnavailable
from app.control.writer import new_change
from app.infra.records import AppliedChange, ChangeOp, DeadLetterCode
from app.main import faust_app, flag_table, replication, settings, writer
from app.web import inputs
from app.web.auth import Access, holds_secret, refuse
from app.web.responses import error, ok

API = "/api/v1/environments"

# How a dead letter's code reads over HTTP.
REJECTION_STATUS = {
    DeadLetterCode.VERSION_CONFLICT: 409,
    DeadLetterCode.INVALID_DEFINITION: 422,
    DeadLetterCode.FLAG_NOT_FOUND: 404,
    DeadLetterCode.MALFORMED: 400,
    DeadLetterCode.IDEMPOTENCY_KEY_REUSED: 422,
}


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


async def read_json(request: web.Request) -> Any | web.Response:
    """The request body as JSON (`app.web.inputs.read_json`), or the 413/400 response."""
    body = await inputs.read_json(request, settings.max_body_bytes)
    if not isinstance(body, inputs.Refused):
        return body
    if body.status == 413:
        return error(413, "PAYLOAD_TOO_LARGE", body.message)
    problems = [{"path": "$", "message": body.message}] if body.too_deep else []
    return error(400, "BAD_REQUEST", body.message, problems)


async def write(
    request: web.Request, environment: str, flag: str, op: ChangeOp, **fields: Any
) -> web.Response:
    """Produce a change, wait for its verdict and answer with it."""
    expected = parse_if_match(request)
    if isinstance(expected, web.Response):
        return expected
    idempotency_key = request.headers.get("Idempotency-Key")
    actor = (request.headers.get("X-Actor") or "admin-api")[:128]  # empty: no actor named
    if mangled := inputs.not_utf8(("Idempotency-Key", idempotency_key), ("X-Actor", actor)):
        return error(400, "BAD_REQUEST", mangled)
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_CHANGE_ID:
        message = f"Idempotency-Key must have 1-{MAX_CHANGE_ID} characters"
        return error(400, "BAD_REQUEST", message)
    if holds_secret(actor, settings) or holds_secret(idempotency_key, settings):
        message = "X-Actor and Idempotency-Key must not hold a token or an SDK key"
        return error(400, "BAD_REQUEST", message)
    change = new_change(
        environment, flag, op, actor, expected_version=expected, change_id=idempotency_key, **fields
    )
    # A retry answered from the table, without a round trip; the agent decides the same way
    # for a retry that gets there first (app.control.changes.decide).
    done = flag_table.applied(environment, idempotency_key) if idempotency_key else None
    if done is not None and done.answers(change):
        return ok(describe(done), headers={"ETag": etag(done.version)})
    outcome = await writer.submit(change)
    if outcome is None:
        return error(
            504,
            "TIMEOUT",
            "the change was sent but not applied in time; retry with the same Idempotency-Key",
            change_id=change.change_id,
        )
    if isinstance(outcome, AppliedChange):
        return ok(describe(outcome), headers={"ETag": etag(outcome.version)})
    if isinstance(outcome, BrokerUnavailable):  # retry later, with the same Idempotency-Key
        return error(
            503, outcome.code, outcome.reason, change_id=change.change_id, current_version=None
        )
    return error(
        REJECTION_STATUS.get(outcome.code, 400),
        outcome.code.value,
        outcome.reason,
        [{"path": path, "message": message} for path, message in outcome.problems],
        change_id=change.change_id,
        current_version=outcome.current_version,
    )


async def recovering() -> web.Response | None:
    """503 while this worker's flag table has not caught up (after a short wait), else None:
    an answer from a partial table would call existing flags missing."""
    if await replication.wait_ready():
        return None
    message = "this worker's flag table is still recovering"
    return error(503, "NOT_READY", message, headers={"Retry-After": "1"})


@faust_app.page(API)
class Environments(View):
    async def get(self, request: web.Request) -> web.StreamResponse:
        denied = refuse(request, settings, Access.READ)
        if denied:
            return denied
        envs = [
            {"environment": e, "seq": flag_table.environment_seq(e)}
            for e in flag_table.environments()
        ]
        return ok({"environments": envs})


@faust_app.page(API + "/{env}/flags")
class Flags(View):
    async def get(self, request: web.Request, env: str) -> web.StreamResponse:
        denied = refuse(request, settings, Access.READ) or check_keys(env)
        if denied:
            return denied
        seq = flag_table.environment_seq(env)
        if request.headers.get("If-None-Match") == etag(seq):
            return web.Response(status=304, headers={"ETag": etag(seq)})
        live = flag_table.live_flags(env)
        if request.query.get("view") == "summary":
            body: Any = {
                "environment": env,
                "seq": seq,
                "flags": [
                    {k: v for k, v in describe(c).items() if k != "definition"}
                    | {"state": (c.definition or {}).get("state")}
                    for _, c in sorted(live.items())
                ],
            }
        else:
            body = {"flags": {key: c.definition for key, c in sorted(live.items())}}
        return ok(body, headers={"ETag": etag(seq)})


@faust_app.page(API + "/{env}/flags/{key}")
class Flag(View):
    async def get(self, request: web.Request, env: str, key: str) -> web.StreamResponse:
        denied = refuse(request, settings, Access.READ) or check_keys(env, key)
        if denied:
            return denied
        change = flag_table.get(env, key)
        if change is None or change.deleted:
            return error(404, "FLAG_NOT_FOUND", f"no flag {key!r} in {env!r}")
        headers = {"ETag": etag(change.version), "X-Flag-Version": str(change.version)}
        if request.headers.get("If-None-Match") == etag(change.version):
            return web.Response(status=304, headers=headers)
        return ok(change.definition, headers=headers)

    async def put(self, request: web.Request, env: str, key: str) -> web.StreamResponse:
        denied = refuse(request, settings, Access.WRITE) or check_keys(env, key)
        if denied:
            return denied
        definition = await read_json(request)
        if isinstance(definition, web.Response):
            return definition
        if not isinstance(definition, dict):
            problem = {"path": "$", "message": "a flag definition is a JSON object"}
            return error(422, "INVALID_DEFINITION", "not a flag definition", [problem])
        return await write(request, env, key, ChangeOp.PUT, definition=definition)

    async def delete(self, request: web.Request, env: str, key: str) -> web.StreamResponse:
        denied = refuse(request, settings, Access.WRITE) or check_keys(env, key)
        return denied or await write(request, env, key, ChangeOp.DELETE)


@faust_app.page(API + "/{env}/flags/{key}/history")
class FlagHistory(View):
    async def get(self, request: web.Request, env: str, key: str) -> web.StreamResponse:
        denied = refuse(request, settings, Access.READ) or check_keys(env, key)
        if denied:
            return denied
        versions = flag_table.history(env, key)
        if not versions:
            return error(404, "FLAG_NOT_FOUND", f"no flag {key!r} in {env!r}")
        body = {"environment": env, "flag": key, "versions": [describe(c) for c in versions]}
        return ok(body)


@faust_app.page(API + "/{env}/flags/{key}/state")
class FlagState(View):
    """The kill switch: flip a flag's `state` without touching the rest of its definition."""

    async def post(self, request: web.Request, env: str, key: str) -> web.StreamResponse:
        denied = refuse(request, settings, Access.WRITE) or check_keys(env, key)
        if denied:
            return denied
        body = await read_json(request)
        if isinstance(body, web.Response):
            return body
        state = body.get("state") if isinstance(body, dict) else None
        if state not in STATES:
            problem = {"path": "$.state", "message": f"must be one of {list(STATES)}"}
            return error(422, "INVALID_STATE", "state must be ENABLED or DISABLED", [problem])
        return await write(request, env, key, ChangeOp.STATE, state=state)
