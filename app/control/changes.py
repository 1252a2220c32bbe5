"""Decoding and deciding flag changes: pure functions from bytes and state to a verdict.

The flag-change agent is a thin loop around these two calls, so everything that can go wrong
with a change (bytes that are not JSON, a definition flagd would refuse, a stale
`expected_version`, a redelivery) is decided here, without Kafka, and tested as data.
"""

from __future__ import annotations

from typing import Any

from app.engine.schema import flag_problems
from app.infra.json_input import Unacceptable, parse_json
from app.infra.keys import KEY_PATTERN, valid_key
from app.infra.records import AppliedChange, ChangeOp, DeadLetterCode, FlagChange, Rejection

STATES = ("ENABLED", "DISABLED")
# A change id is remembered (RocksDB key and value) for FLAGSTREAM_CHANGE_ID_DEPTH changes: a
# UUID or a client's Idempotency-Key fits, a megabyte does not.
MAX_CHANGE_ID = 200


def _malformed(reason: str, *problems: tuple[str, str]) -> Rejection:
    return Rejection(DeadLetterCode.MALFORMED, reason, problems)


def decode_change(raw: bytes | None) -> FlagChange | Rejection:
    """Turn the bytes of a `flag-changes` record into a change, or say what is wrong."""
    if not raw:
        return _malformed("empty record")
    data: Any = parse_json(raw)  # strict and depth-bounded, as every HTTP body
    if isinstance(data, Unacceptable):
        return _malformed(data.message)
    if not isinstance(data, dict):
        return _malformed("a change must be a JSON object")
    problems: list[tuple[str, str]] = []

    def text(name: str, *, required: bool = True) -> str:
        value = data.get(name)
        if isinstance(value, str) and value:
            return value
        if required or value is not None:
            problems.append((f"$.{name}", "must be a non-empty string"))
        return ""

    change_id, environment, flag, actor = (
        text("change_id"),
        text("environment"),
        text("flag"),
        text("actor"),
    )
    if len(change_id) > MAX_CHANGE_ID:
        problems.append(("$.change_id", f"must have at most {MAX_CHANGE_ID} characters"))
    for name, key in (("environment", environment), ("flag", flag)):
        if key and not valid_key(key):
            problems.append((f"$.{name}", f"must match {KEY_PATTERN.pattern}"))
    try:
        op = ChangeOp(str(data.get("op")))
    except ValueError:
        problems.append(("$.op", f"must be one of {[o.value for o in ChangeOp]}"))
        op = ChangeOp.PUT
    expected = data.get("expected_version")
    if expected is not None and (
        not isinstance(expected, int) or isinstance(expected, bool) or expected < 0
    ):
        problems.append(("$.expected_version", "must be a non-negative integer or null"))
    produced_at = data.get("produced_at", 0.0)
    if not isinstance(produced_at, int | float) or isinstance(produced_at, bool):
        problems.append(("$.produced_at", "must be a number (unix seconds)"))
        produced_at = 0.0
    definition = data.get("definition")
    state = data.get("state")
    if op is ChangeOp.PUT and not isinstance(definition, dict):
        problems.append(("$.definition", "a put needs a flag definition object"))
    if op is ChangeOp.STATE and state not in STATES:
        problems.append(("$.state", f"must be one of {list(STATES)}"))
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
        produced_at=float(produced_at),
        definition=definition if op is ChangeOp.PUT else None,
        state=state if op is ChangeOp.STATE else None,
        expected_version=expected,
    )


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
    live = current is not None and not current.deleted
    current_version = current.version if current is not None else 0
    if change.expected_version is not None and change.expected_version != current_version:
        return Rejection(
            DeadLetterCode.VERSION_CONFLICT,
            f"expected version {change.expected_version}, the flag is at version {current_version}",
            current_version=current_version,
        )
    if change.op is ChangeOp.PUT:
        definition = change.definition
        assert definition is not None  # decode_change guarantees it
    else:
        if not live:
            return Rejection(DeadLetterCode.FLAG_NOT_FOUND, f"flag {change.flag!r} does not exist")
        assert current is not None and current.definition is not None
        definition = (
            None if change.op is ChangeOp.DELETE else {**current.definition, "state": change.state}
        )
    if definition is not None:
        problems = flag_problems(definition)
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
