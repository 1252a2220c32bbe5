"""A flag's metric declarations are checked when it is written: `decide` refuses a put whose
declarations do not parse, naming the metadata path, and keeps the kill switch working."""

from __future__ import annotations

from typing import Any

from app.control.changes import decide
from app.infra.records import AppliedChange, ChangeOp, DeadLetterCode, FlagChange, Rejection

EXPERIMENT = {
    "state": "ENABLED",
    "variants": {"on": True, "off": False},
    "defaultVariant": "off",
    "targeting": {"fractional": [["on", 50], ["off", 50]]},
    "metadata": {"experiment": True, "control": "off", "metric.buy": "conversion"},
}


def change(op: ChangeOp = ChangeOp.PUT, **fields: Any) -> FlagChange:
    base: dict[str, Any] = {
        "change_id": "c1",
        "environment": "dev",
        "flag": "f",
        "op": op,
        "actor": "me",
        "produced_at": 1.0,
    }
    return FlagChange(**(base | fields))


def test_a_put_with_metric_declarations_that_parse_applies() -> None:
    verdict = decide(change(definition=EXPERIMENT), None, 0, 2.0)
    assert isinstance(verdict, AppliedChange) and verdict.version == 1


def test_a_put_with_a_bad_metric_declaration_is_refused_naming_its_path() -> None:
    metadata = {**EXPERIMENT["metadata"], "metric.revenue": "sum", "control": "maybe"}
    verdict = decide(change(definition={**EXPERIMENT, "metadata": metadata}), None, 0, 2.0)
    assert isinstance(verdict, Rejection)
    assert verdict.code is DeadLetterCode.INVALID_DEFINITION
    assert [path for path, _ in verdict.problems] == [
        "$.metadata.control",
        '$.metadata["metric.revenue"]',
    ]


def test_the_kill_switch_flips_a_flag_stored_before_the_check() -> None:
    """A flag written before declarations were checked must still be switched off."""
    stored = decide(change(definition=EXPERIMENT), None, 0, 2.0)
    assert isinstance(stored, AppliedChange)
    old = AppliedChange(
        **{
            **{f: getattr(stored, f) for f in stored.__dataclass_fields__},
            "definition": {**EXPERIMENT, "metadata": {"experiment": True, "metric.x": "?"}},
        }
    )
    verdict = decide(change(ChangeOp.STATE, change_id="c2", state="DISABLED"), old, 1, 3.0)
    assert isinstance(verdict, AppliedChange) and verdict.definition is not None
    assert verdict.definition["state"] == "DISABLED"
