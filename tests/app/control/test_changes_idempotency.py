"""A change id names one request: the same request again is a retry, another one is refused."""

from __future__ import annotations

from dataclasses import replace

from app.control.changes import decide, decode_change
from app.infra.records import AppliedChange, ChangeOp, DeadLetterCode, FlagChange, Rejection, dumps

FLAG = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}
PUT = FlagChange("key-1", "dev", "f", ChangeOp.PUT, "me", 5.0, definition=FLAG)


def first_outcome() -> AppliedChange:
    verdict = decide(PUT, None, 0, 9.0, source=(2, 40))
    assert isinstance(verdict, AppliedChange)
    return verdict


def test_an_applied_change_names_its_command_and_request() -> None:
    applied = first_outcome()
    assert (applied.source_partition, applied.source_offset) == (2, 40)
    assert applied.request == PUT.request_digest()
    assert AppliedChange.from_json(applied.to_json()) == applied


def test_the_same_request_again_is_a_retry_whoever_sends_it_and_when() -> None:
    retry = replace(PUT, actor="someone else", produced_at=99.0)
    assert decide(retry, first_outcome(), 1, 10.0, earlier=first_outcome()) is None


def test_another_request_under_the_same_id_is_refused() -> None:
    for other in (
        replace(PUT, flag="g"),
        replace(PUT, definition={**FLAG, "defaultVariant": "on"}),
        replace(PUT, expected_version=1),
        replace(PUT, op=ChangeOp.DELETE, definition=None),
    ):
        verdict = decide(other, first_outcome(), 1, 10.0, earlier=first_outcome())
        assert isinstance(verdict, Rejection), other
        assert verdict.code is DeadLetterCode.IDEMPOTENCY_KEY_REUSED
        assert "key-1" in verdict.reason


def test_a_change_from_before_request_digests_counts_as_the_same_request() -> None:
    data = first_outcome().to_json()
    del data["request"], data["source_partition"], data["source_offset"]
    old = AppliedChange.from_json(data)
    assert (old.request, old.source_offset) == ("", -1)
    assert decide(replace(PUT, flag="g"), None, 1, 10.0, earlier=old) is None


def test_a_command_with_an_overlong_change_id_is_malformed() -> None:
    command = {**PUT.to_json(), "change_id": "x" * 201}
    rejection = decode_change(dumps(command))
    assert isinstance(rejection, Rejection) and rejection.code is DeadLetterCode.MALFORMED
    assert ("$.change_id", "must have at most 200 characters") in rejection.problems
    assert isinstance(decode_change(dumps({**command, "change_id": "x" * 200})), FlagChange)


def test_a_malformed_command_keeps_its_change_id_for_its_writer() -> None:
    rejection = decode_change(dumps({**PUT.to_json(), "actor": ""}))
    assert isinstance(rejection, Rejection) and rejection.code is DeadLetterCode.MALFORMED
    assert rejection.change_id == "key-1"
    unusable = decode_change(dumps({**PUT.to_json(), "actor": "", "change_id": "x" * 201}))
    assert isinstance(unusable, Rejection) and unusable.change_id is None
