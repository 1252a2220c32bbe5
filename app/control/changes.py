"""Decoding and deciding flag changes: pure functions from bytes and state to a verdict.

The flag-change agent is a thin loop around these two calls, so everything that can go wrong
with a change (bytes that are not JSON, a definition flagd would refuse, a stale
`expected_version`, a redelivery) is decided here, without Kafka, and tested as data.
"""

from __future__ import annotations

from typing import Any

from app.engine import JsonObject
from app.engine.schema import flag_problems
from app.experiments import metrics as experiment_metrics
from app.infra.json_input import Unacceptable, parse_json
from app.infra.keys import KEY_PATTERN, valid_key
from app.infra.records import (
    AppliedChange,
    ChangeOp,
    DeadLetterCode,
    FlagChange,
    Rejection,
)

__all__ = ["MAX_CHANGE_ID", "STATES", "decide", "decode_change"]

STATES = ("ENABLED", "DISABLED")
# A change id is remembered (RocksDB key and value) for FLAGSTREAM_CHANGE_ID_DEPTH changes: a
# UUID or a client's Idempotency-Key fits, a megabyte does not.
MAX_CHANGE_ID = 200


def decode_change(raw: bytes | None) -> FlagChange | Rejection:
    """Turn the bytes of a `flag-changes` record into a change, or say what is wrong."""
    data = _json_object(raw)
    if isinstance(data, Rejection):
        return data
    problems: list[tuple[str, str]] = []
    change_id, environment, flag, actor = (
        _text(data, name, problems) for name in ("change_id", "environment", "flag", "actor")
    )
    problems += _id_and_key_problems(change_id, environment, flag)
    op = _op(data, problems)
    expected = _expected_version(data, problems)
    produced_at = _produced_at(data, problems)
    definition, state = data.get("definition"), data.get("state")
    problems += _body_problems(op, definition, state)
    if problems:
        usable = change_id and not any(path == "$.change_id" for path, _ in problems)
        return Rejection(
            DeadLetterCode.MALFORMED,
            "the change envelope is invalid",
            tuple(problems),
            change_id=change_id if usable else None,
        )
    return FlagChange(
        change_id=change_id,
        environment=environment,
        flag=flag,
        op=op,
        actor=actor,
        produced_at=produced_at,
        # The isinstance checks only narrow: _body_problems refused any other shape.
        definition=definition if op is ChangeOp.PUT and isinstance(definition, dict) else None,
        state=state if op is ChangeOp.STATE and isinstance(state, str) else None,
        expected_version=expected,
    )


def _json_object(raw: bytes | None) -> JsonObject | Rejection:
    """The record's JSON object, parsed strict and depth-bounded as every HTTP body."""
    if not raw:
        return Rejection.malformed("empty record")
    data: Any = parse_json(raw)
    if isinstance(data, Unacceptable):
        return Rejection.malformed(data.message)
    if not isinstance(data, dict):
        return Rejection.malformed("a change must be a JSON object")
    return data


def _text(data: JsonObject, name: str, problems: list[tuple[str, str]]) -> str:
    """A required non-empty string field ("" and a problem when it is not one)."""
    value = data.get(name)
    if isinstance(value, str) and value:
        return value
    problems.append((f"$.{name}", "must be a non-empty string"))
    return ""


def _id_and_key_problems(change_id: str, environment: str, flag: str) -> list[tuple[str, str]]:
    problems = []
    if len(change_id) > MAX_CHANGE_ID:
        problems.append(("$.change_id", f"must have at most {MAX_CHANGE_ID} characters"))
    for name, key in (("environment", environment), ("flag", flag)):
        if key and not valid_key(key):
            problems.append((f"$.{name}", f"must match {KEY_PATTERN.pattern}"))
    return problems


def _op(data: JsonObject, problems: list[tuple[str, str]]) -> ChangeOp:
    try:
        return ChangeOp(str(data.get("op")))
    except ValueError:
        problems.append(("$.op", f"must be one of {[o.value for o in ChangeOp]}"))
        return ChangeOp.PUT


def _expected_version(data: JsonObject, problems: list[tuple[str, str]]) -> int | None:
    expected = data.get("expected_version")
    if expected is None or (
        isinstance(expected, int) and not isinstance(expected, bool) and expected >= 0
    ):
        return expected
    problems.append(("$.expected_version", "must be a non-negative integer or null"))
    return None


def _produced_at(data: JsonObject, problems: list[tuple[str, str]]) -> float:
    produced_at = data.get("produced_at", 0.0)
    if isinstance(produced_at, int | float) and not isinstance(produced_at, bool):
        return float(produced_at)
    problems.append(("$.produced_at", "must be a number (unix seconds)"))
    return 0.0


def _body_problems(op: ChangeOp, definition: Any, state: Any) -> list[tuple[str, str]]:
    """What the operation needs: a definition object for a put, a known state for `state`."""
    if op is ChangeOp.PUT and not isinstance(definition, dict):
        return [("$.definition", "a put needs a flag definition object")]
    if op is ChangeOp.STATE and state not in STATES:
        return [("$.state", f"must be one of {list(STATES)}")]
    return []


def decide(
    change: FlagChange,
    current: AppliedChange | None,
    environment_seq: int,
    now: float,
    *,
    earlier: AppliedChange | None = None,
    source: tuple[int, int] = (-1, -1),
) -> AppliedChange | Rejection | None:
    """The next version of the flag, why there is none, or None for a change already applied.

    `current` is the flag's latest applied version (a deleted flag is a version with no
    definition), `environment_seq` the last sequence number of the environment, `earlier`
    what the table remembers this change id produced, `source` the (partition, offset) of the
    command on `flag-changes`. A change id names one request: the same request again is a
    retry (None: nothing to do, its writer learns the first outcome), another request under
    the same id is refused, as payment APIs refuse a reused idempotency key.
    """
    if earlier is not None:
        if earlier.answers(change):
            return None
        return Rejection(
            DeadLetterCode.IDEMPOTENCY_KEY_REUSED,
            f"change id {change.change_id!r} was used for another request "
            f"(version {earlier.version} of flag {earlier.flag!r}); use a new Idempotency-Key",
        )
    current_version = current.version if current is not None else 0
    if change.expected_version is not None and change.expected_version != current_version:
        return Rejection(
            DeadLetterCode.VERSION_CONFLICT,
            f"expected version {change.expected_version}, the flag is at version {current_version}",
            current_version=current_version,
        )
    definition = _next_definition(change, current)
    if isinstance(definition, Rejection):
        return definition
    if definition is not None:
        problems = flag_problems(definition)
        if not problems and change.op is ChangeOp.PUT:
            # What flagstream reads from metadata (metric declarations), checked on a put
            # only: a kill switch must flip a flag stored before this check existed.
            problems = experiment_metrics.problems(definition)
        if problems:
            return Rejection(
                DeadLetterCode.INVALID_DEFINITION,
                f"the flag definition has {len(problems)} problem(s)",
                tuple((p.path, p.message) for p in problems),
            )
    return AppliedChange(
        change_id=change.change_id,
        environment=change.environment,
        flag=change.flag,
        op=change.op,
        seq=environment_seq + 1,
        version=current_version + 1,
        definition=definition,
        actor=change.actor,
        updated_at=now,
        produced_at=change.produced_at,
        source_partition=source[0],
        source_offset=source[1],
        request=change.request_digest(),
    )


def _next_definition(
    change: FlagChange, current: AppliedChange | None
) -> JsonObject | Rejection | None:
    """The definition the change leaves (None: deleted), or why it cannot apply."""
    if change.op is ChangeOp.PUT:
        if change.definition is None:  # decode_change refuses such a put; a caller may not
            return Rejection.malformed("a put needs a flag definition object")
        return change.definition
    if current is None or current.definition is None:
        return Rejection(DeadLetterCode.FLAG_NOT_FOUND, f"flag {change.flag!r} does not exist")
    if change.op is ChangeOp.DELETE:
        return None
    return {**current.definition, "state": change.state}
