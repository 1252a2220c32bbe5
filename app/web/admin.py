"""The admin API: flags of an environment as flagd JSON, written through `flag-changes`.

Reads come from this worker's table. Writes produce a command and wait (bounded) until this
worker's table holds the result, so a client that writes then reads the same worker sees its
write. Versions are ETags: `If-Match` makes a write conditional (409 when stale).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from app.control.changes import MAX_CHANGE_ID, STATES
from app.control.outcomes import BrokerUnavailable
from app.control.writer import Writer, new_change
from app.infra.records import AppliedChange, ChangeOp, DeadLetterCode
from app.infra.settings import Settings
from app.web import inputs
from app.web.admin_answers import ACCESS, API, check_keys, describe, etag, parse_if_match, read_json
from app.web.auth import Access, Credentials, bearer
from app.web.responses import error, ok
from tables.flags import FlagTable

__all__ = ["AdminApi"]

# How a dead letter's code reads over HTTP.
REJECTION_STATUS = {
    DeadLetterCode.VERSION_CONFLICT: 409,
    DeadLetterCode.INVALID_DEFINITION: 422,
    DeadLetterCode.FLAG_NOT_FOUND: 404,
    DeadLetterCode.MALFORMED: 400,
    DeadLetterCode.IDEMPOTENCY_KEY_REUSED: 422,
}


class AdminApi:
    """The admin routes, reading this worker's table and writing through `writer`."""

    def __init__(
        self,
        settings: Settings,
        credentials: Credentials,
        flags: FlagTable,
        writer: Writer,
    ) -> None:
        self.max_body = settings.max_body_bytes
        self.credentials = credentials
        self.flags = flags
        self.writer = writer

    def routes(self) -> list[web.RouteDef]:
        flag = API + "/{env}/flags/{key}"
        return [
            web.get(ACCESS, self.access),
            web.get(API, self.environments),
            web.get(API + "/{env}/flags", self.list_flags),
            web.get(flag, self.get_flag),
            web.put(flag, self.put_flag),
            web.delete(flag, self.delete_flag),
            web.get(flag + "/history", self.history),
            web.post(flag + "/state", self.set_state),
        ]

    def _refuse(
        self, request: web.Request, needed: Access, env: str, key: str | None = None
    ) -> web.Response | None:
        return self.credentials.refuse(request, needed) or check_keys(env, key)

    async def access(self, request: web.Request) -> web.Response:
        """What the request's token may do, so a client (the dashboard) can hide what it may not.

        Answering it costs nothing a 401 does not already reveal: the token is the caller's own.
        """
        denied = self.credentials.refuse(request, Access.READ)
        if denied:
            return denied
        granted = self.credentials.access_of(bearer(request))
        return ok({"access": "admin" if granted is Access.WRITE else "read"})

    async def environments(self, request: web.Request) -> web.Response:
        denied = self.credentials.refuse(request, Access.READ)
        if denied:
            return denied
        envs = [
            {"environment": e, "seq": self.flags.environment_seq(e)}
            for e in self.flags.environments()
        ]
        return ok({"environments": envs})

    async def list_flags(self, request: web.Request) -> web.Response:
        env = request.match_info["env"]
        denied = self._refuse(request, Access.READ, env)
        if denied:
            return denied
        seq = self.flags.environment_seq(env)
        if request.headers.get("If-None-Match") == etag(seq):
            return web.Response(status=304, headers={"ETag": etag(seq)})
        live = self.flags.live_flags(env)
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

    async def get_flag(self, request: web.Request) -> web.Response:
        env, key = request.match_info["env"], request.match_info["key"]
        denied = self._refuse(request, Access.READ, env, key)
        if denied:
            return denied
        change = self.flags.get(env, key)
        if change is None or change.deleted:
            return error(404, "FLAG_NOT_FOUND", f"no flag {key!r} in {env!r}")
        headers = {"ETag": etag(change.version), "X-Flag-Version": str(change.version)}
        if request.headers.get("If-None-Match") == etag(change.version):
            return web.Response(status=304, headers=headers)
        return ok(change.definition, headers=headers)

    async def put_flag(self, request: web.Request) -> web.Response:
        env, key = request.match_info["env"], request.match_info["key"]
        denied = self._refuse(request, Access.WRITE, env, key)
        if denied:
            return denied
        definition = await read_json(request, self.max_body)
        if isinstance(definition, web.Response):
            return definition
        if not isinstance(definition, dict):
            problem = {"path": "$", "message": "a flag definition is a JSON object"}
            return error(422, "INVALID_DEFINITION", "not a flag definition", [problem])
        return await self.write(request, env, key, ChangeOp.PUT, definition=definition)

    async def delete_flag(self, request: web.Request) -> web.Response:
        env, key = request.match_info["env"], request.match_info["key"]
        denied = self._refuse(request, Access.WRITE, env, key)
        return denied or await self.write(request, env, key, ChangeOp.DELETE)

    async def history(self, request: web.Request) -> web.Response:
        env, key = request.match_info["env"], request.match_info["key"]
        denied = self._refuse(request, Access.READ, env, key)
        if denied:
            return denied
        versions = self.flags.history(env, key)
        if not versions:
            return error(404, "FLAG_NOT_FOUND", f"no flag {key!r} in {env!r}")
        body = {"environment": env, "flag": key, "versions": [describe(c) for c in versions]}
        return ok(body)

    async def set_state(self, request: web.Request) -> web.Response:
        """The kill switch: flip a flag's `state` without touching the rest of its definition."""
        env, key = request.match_info["env"], request.match_info["key"]
        denied = self._refuse(request, Access.WRITE, env, key)
        if denied:
            return denied
        body = await read_json(request, self.max_body)
        if isinstance(body, web.Response):
            return body
        state = body.get("state") if isinstance(body, dict) else None
        if state not in STATES:
            problem = {"path": "$.state", "message": f"must be one of {list(STATES)}"}
            return error(422, "INVALID_STATE", "state must be ENABLED or DISABLED", [problem])
        return await self.write(request, env, key, ChangeOp.STATE, state=state)

    async def write(
        self, request: web.Request, environment: str, flag: str, op: ChangeOp, **fields: Any
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
        if self.credentials.holds_secret(actor) or self.credentials.holds_secret(idempotency_key):
            message = "X-Actor and Idempotency-Key must not hold a token or an SDK key"
            return error(400, "BAD_REQUEST", message)
        change = new_change(
            environment,
            flag,
            op,
            actor,
            expected_version=expected,
            change_id=idempotency_key,
            **fields,
        )
        # A retry answered from the table, without a round trip; the agent decides the same way
        # for a retry that gets there first (app.control.changes.decide).
        done = self.flags.applied(environment, idempotency_key) if idempotency_key else None
        if done is not None and done.answers(change):
            return ok(describe(done), headers={"ETag": etag(done.version)})
        outcome = await self.writer.submit(change)
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
