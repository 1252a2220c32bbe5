"""JsonLogic operations, case by case (tests/engine/cases/jsonlogic.json).

Each case is ``[description, rule, data, expected]``. The expectations were produced by
the JsonLogic that ``openfeature-flagd-core`` runs, except the last few, which record
where we deliberately answer as flagd/JavaScript do instead (see docs/engine.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.engine.jsonlogic import InvalidRuleError, Scope, compile_rule
from app.engine.model import FractionalVersion
from tests.engine.json_equality import same_json

CASES = json.loads((Path(__file__).parent / "cases" / "jsonlogic.json").read_text("utf-8"))


def _scope(**evaluators: Any) -> Scope:
    return Scope("flag", FractionalVersion.V3, evaluators)


@pytest.mark.parametrize(
    ("description", "rule", "data", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_case(description: str, rule: Any, data: Any, expected: Any) -> None:
    result = compile_rule(rule, _scope())(data)
    assert same_json(result, expected), f"{description}: {result!r} != {expected!r}"


def test_unknown_operation_is_invalid() -> None:
    with pytest.raises(InvalidRuleError, match="unknown operation"):
        compile_rule({"if": [{"log": "x"}, 1, 2]}, _scope())


def test_ref_is_inlined_and_missing_ref_is_invalid() -> None:
    scope = _scope(adult={">=": [{"var": "age"}, 18]})
    assert compile_rule({"if": [{"$ref": "adult"}, "yes", "no"]}, scope)({"age": 20}) == "yes"
    with pytest.raises(InvalidRuleError, match="unknown evaluator"):
        compile_rule({"$ref": "nope"}, scope)


def test_ref_cycle_is_invalid() -> None:
    scope = _scope(a={"$ref": "b"}, b={"!": {"$ref": "a"}})
    with pytest.raises(InvalidRuleError, match="cycle"):
        compile_rule({"$ref": "a"}, scope)


def test_enrichment_is_only_requested_when_flagd_properties_may_be_read() -> None:
    plain = _scope()
    compile_rule({"==": [{"var": "email"}, "x"]}, plain)
    assert not plain.needs_enrichment
    for rule in ({"var": "$flagd.timestamp"}, {"var": ""}, {"var": {"cat": ["a", "b"]}}):
        scope = _scope()
        compile_rule(rule, scope)
        assert scope.needs_enrichment, rule
