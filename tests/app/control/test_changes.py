"""Decoding and deciding flag changes, as data: no broker needed to know the verdicts."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.control.changes import decide, decode_change
from app.infra.json_input import MAX_DEPTH
from app.infra.records import (
    AppliedChange,
    ChangeOp,
    DeadLetterCode,
    FlagChange,
    Rejection,
    dumps,
    loads,
)

FLAG = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}


def envelope(**fields: Any) -> bytes:
    base = {
        "change_id": "c1",
        "environment": "dev",
        "flag": "f",
        "op": "put",
        "actor": "me",
        "definition": FLAG,
    }
    return dumps({**base, **fields})


def applied(
    version: int = 1, definition: dict[str, Any] | None = FLAG, seq: int = 1
) -> AppliedChange:
    return AppliedChange("c0", "dev", "f", ChangeOp.PUT, seq, version, definition, "me", 1.0, 1.0)


def nested(depth: int) -> Any:
    """A JSON value `depth` containers deep."""
    value: Any = True
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (b"", None),
        (b"\xff\xfe", None),
        (b"[1]", None),
        (b'"text"', None),
        (b"{" * 100_000, None),
        (envelope(change_id=""), "$.change_id"),
        (envelope(environment="a/b"), "$.environment"),
        (envelope(flag=7), "$.flag"),
        (envelope(op="upsert"), "$.op"),
        (envelope(expected_version=-1), "$.expected_version"),
        (envelope(expected_version=True), "$.expected_version"),
        (envelope(definition=None), "$.definition"),
        (envelope(op="state", state="ON"), "$.state"),
        (envelope(produced_at="yesterday"), "$.produced_at"),
    ],
)
def test_undecodable_changes_are_malformed(raw: bytes, path: str | None) -> None:
    result = decode_change(raw)
    assert isinstance(result, Rejection)
    assert result.code is DeadLetterCode.MALFORMED
    if path:
        assert path in {p for p, _ in result.problems}


def test_a_command_nested_deeper_than_the_bound_is_malformed() -> None:
    """Over-deep JSON is refused where it enters, as at the HTTP edge (app.infra.json_input)."""
    deep = {**FLAG, "variants": {"on": nested(MAX_DEPTH), "off": False}}
    result = decode_change(envelope(definition=deep))
    assert isinstance(result, Rejection)
    assert result.code is DeadLetterCode.MALFORMED
    assert f"nested deeper than {MAX_DEPTH} levels" in result.reason


def test_a_command_at_the_bound_decodes() -> None:
    at_bound = {**FLAG, "variants": {"on": nested(MAX_DEPTH - 3), "off": False}}
    assert isinstance(decode_change(envelope(definition=at_bound)), FlagChange)


def test_a_valid_envelope_decodes() -> None:
    change = decode_change(envelope(expected_version=3, produced_at=12.5))
    assert change == FlagChange("c1", "dev", "f", ChangeOp.PUT, "me", 12.5, FLAG, None, 3)


@given(st.binary(max_size=200))
def test_decoding_never_raises(raw: bytes) -> None:
    assert isinstance(decode_change(raw), FlagChange | Rejection)


def change(op: ChangeOp = ChangeOp.PUT, **fields: Any) -> FlagChange:
    return FlagChange(
        "c1",
        "dev",
        "f",
        op,
        "me",
        5.0,
        **({"definition": FLAG} if op is ChangeOp.PUT else {}) | fields,
    )


def test_a_first_put_is_version_1_and_numbers_the_environment() -> None:
    verdict = decide(change(), None, environment_seq=41, now=9.0)
    assert isinstance(verdict, AppliedChange)
    assert (verdict.version, verdict.seq, verdict.updated_at, verdict.produced_at) == (
        1,
        42,
        9.0,
        5.0,
    )


@pytest.mark.parametrize(
    ("expected", "current", "code"),
    [
        (0, applied(1), DeadLetterCode.VERSION_CONFLICT),
        (2, applied(1), DeadLetterCode.VERSION_CONFLICT),
        (1, None, DeadLetterCode.VERSION_CONFLICT),
        (1, applied(1), None),
        (0, None, None),
        (3, applied(3, definition=None), None),  # re-creating a deleted flag
    ],
)
def test_expected_version(
    expected: int, current: AppliedChange | None, code: DeadLetterCode | None
) -> None:
    verdict = decide(change(expected_version=expected), current, 1, 0.0)
    if code is None:
        assert isinstance(verdict, AppliedChange)
    else:
        assert isinstance(verdict, Rejection) and verdict.code is code


def test_state_and_delete_need_a_live_flag() -> None:
    for op, fields in ((ChangeOp.DELETE, {}), (ChangeOp.STATE, {"state": "DISABLED"})):
        for current in (None, applied(2, definition=None)):
            verdict = decide(change(op, **fields), current, 1, 0.0)
            assert isinstance(verdict, Rejection) and verdict.code is DeadLetterCode.FLAG_NOT_FOUND


def test_the_kill_switch_changes_only_the_state() -> None:
    verdict = decide(change(ChangeOp.STATE, state="DISABLED"), applied(4), 7, 0.0)
    assert isinstance(verdict, AppliedChange)
    assert verdict.definition == {**FLAG, "state": "DISABLED"}
    assert (verdict.version, verdict.seq) == (5, 8)


def test_a_delete_is_a_version_without_definition() -> None:
    verdict = decide(change(ChangeOp.DELETE), applied(2), 3, 0.0)
    assert isinstance(verdict, AppliedChange) and verdict.deleted and verdict.version == 3


def test_a_put_without_a_definition_is_refused_not_a_crash() -> None:
    """A `FlagChange` built by a caller (not `decode_change`) without a definition: a verdict,
    not an AssertionError (nor, with asserts off, a put that deletes the flag)."""
    verdict = decide(change(definition=None), applied(2), 3, 0.0)
    assert isinstance(verdict, Rejection) and verdict.code is DeadLetterCode.MALFORMED
    assert "needs a flag definition" in verdict.reason


def test_an_invalid_definition_lists_every_problem() -> None:
    bad = {"state": "ON", "variants": {"a": 1}, "defaultVariant": "b"}
    verdict = decide(change(definition=bad), None, 0, 0.0)
    assert isinstance(verdict, Rejection) and verdict.code is DeadLetterCode.INVALID_DEFINITION
    assert {"$.state", "$.defaultVariant"} <= {path for path, _ in verdict.problems}


def test_an_invalid_rule_lists_each_bad_argument_at_its_path() -> None:
    """The decide path runs the compiled validator once; every bad argument of one rule is
    a problem of its own (the old validator reported only the deepest one)."""
    rule = {"if": [{"sem_ver": [{"var": "v"}, "*", "1.0.0"]}, "a", {"fractional": [["a", -1]]}]}
    bad = {"state": "ENABLED", "variants": {"a": 1}, "targeting": rule}
    verdict = decide(change(definition=bad), None, 0, 0.0)
    assert isinstance(verdict, Rejection) and verdict.code is DeadLetterCode.INVALID_DEFINITION
    assert [path for path, _ in verdict.problems] == [
        "$.targeting.if[0].sem_ver[1]",
        "$.targeting.if[2].fractional[0][1]",
    ]


def test_applied_changes_round_trip_through_json() -> None:
    original = applied(3, seq=9)
    assert AppliedChange.from_json(loads(dumps(original.to_json()))) == original
