"""Edges of the engine the spec suites do not reach: slow paths, bounds and odd values.

Each case states what flagd/JsonLogic answers (or what the engine promises: a value, never
an exception); together with the other engine tests they keep the engine's coverage gate.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, cast

import pytest

from app.engine import (
    CompiledFlag,
    ErrorCode,
    bucketing,
    budget,
    coerce,
    compile_flag,
    compile_flag_set,
    evaluate,
    rules,
)
from app.engine.evaluate import evaluate_typed
from app.engine.jsonlogic import (
    MAX_DEPTH,
    RuleTooLargeError,
    Scope,
    accumulator_copies,
    compile_rule,
    targeting_problems,
)
from app.engine.model import FractionalVersion
from app.engine.problems import json_path
from app.engine.refs import RefError, inline_refs

V1, V2, V3 = FractionalVersion.V1, FractionalVersion.V2, FractionalVersion.V3
LONE_SURROGATE = "\ud800"


def run(rule: Any, data: Any, version: FractionalVersion = V3) -> Any:
    budget.reset()
    return compile_rule(rule, Scope("flag", version, {}))(data)


def _nested(levels: int, leaf: Any) -> Any:
    for _ in range(levels):
        leaf = [leaf]
    return leaf


# --- jsonlogic ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "data", "expected"),
    [
        ({"missing_some": [1, "a"]}, {}, []),  # keys not an array: nothing is missing
        ({"map": [[1, 2, 3]]}, {}, [None, None, None]),  # no sublogic
        ({"<": [1, 2, {"var": "absent"}]}, {}, True),  # between without an upper bound
        ({"in": [{"var": "x"}, [[1], [2]]]}, {"x": [2]}, True),  # unhashable constant list
        ({"in": [{"var": "x"}, [[1], [2]]]}, {"x": [3]}, False),
        (
            {"if": [{"var": "a"}, {"var": "x"}, {"var": "b"}, "two", {"var": "y"}]},
            {"a": False, "b": False, "y": "Y"},
            "Y",
        ),
        (
            {"if": [{"var": "a"}, {"var": "x"}, {"var": "b"}, "two", {"var": "y"}]},
            {"a": True, "x": "X"},
            "X",
        ),
        ({"starts_with": [{"var": "s"}, {"var": "p"}]}, {"s": "abc", "p": "ab"}, True),
        ({"starts_with": [{"var": "s"}, {"var": "p"}]}, {"s": "abc", "p": 1}, None),
        ({"sem_ver": [{"var": "v"}, {"var": "op"}, "1.0.0"]}, {"v": "1.2.0", "op": ">"}, True),
        ({"sem_ver": [{"var": "v"}, {"var": "op"}, "1.0.0"]}, {"v": "1.2.0", "op": "^"}, True),
        ({"sem_ver": [{"var": "v"}, {"var": "op"}, "1.0.0"]}, {"v": "2.0.0", "op": "~"}, False),
        ({"sem_ver": [{"var": "v"}, {"var": "op"}, "1.0.0"]}, {"v": "1.2.0", "op": "?"}, None),
        ({"sem_ver": [{"var": "v"}, {"var": "op"}, "1.0.0"]}, {"v": "1.2.0", "op": 3}, None),
        ({"sem_ver": [{"var": "v"}, {"var": "op"}, "1.0.0"]}, {"v": "x", "op": "="}, None),
        ({"fractional": [{"var": "k"}, ["a", True]]}, {"k": "u"}, None),  # bool weight
        ({"fractional": [["a", True]]}, {"targetingKey": "u"}, None),  # shorthand, bad split
    ],
)
def test_operation(rule: Any, data: Any, expected: Any) -> None:
    assert run(rule, data) == expected


@pytest.mark.parametrize("operation", ["/", "%"])
def test_arithmetic_overflow_is_nan(operation: str) -> None:
    assert math.isnan(run({operation: [{"var": "a"}, 1.5e-300]}, {"a": 10**400}))


def test_a_long_chain_of_literal_results_loops() -> None:
    """Past 64 pairs the if/elif chain is a loop, not generated code: same answers."""
    arms = [part for i in range(70) for part in ({"==": [{"var": "n"}, i]}, f"v{i}")]
    rule = {"if": [*arms, "none"]}
    assert run(rule, {"n": 65}) == "v65"
    assert run(rule, {"n": 999}) == "none"


def test_targeting_nested_too_deep_is_refused() -> None:
    deep: Any = True
    for _ in range(MAX_DEPTH + 2):
        deep = {"!": deep}
    with pytest.raises(RuleTooLargeError, match="deeper than 64"):
        run(deep, {})
    assert targeting_problems(deep)[0][1] == "targeting is nested deeper than 64 levels"


@pytest.mark.parametrize(
    ("step", "copies"),
    [
        ({"if": [{"var": "accumulator"}]}, 1),
        ({"if": [True, {"var": "accumulator"}, {"cat": [{"var": "a"}, {"var": "a"}]}]}, 2),
        ({"and": [{"var": "current"}, {"var": "accumulator"}]}, 1),
        ({"map": [{"var": "accumulator"}, {"cat": [{"var": ""}, {"var": ""}]}]}, 2),
        ({"reduce": [{"var": "accumulator"}, {"var": "x"}, {"var": "accumulator"}]}, 2),
        ({"filter": [{"var": "accumulator"}, True]}, 1),
        ({"substr": [{"var": "accumulator"}, 1]}, 1),
        ({"substr": []}, 0),
        ({"$ref": "shared"}, 1),
        ({"$ref": "absent"}, 0),
        ({"==": [{"var": "accumulator"}, 1]}, 0),
        ({"no such operation": [{"var": "accumulator"}]}, 0),
        (_nested(MAX_DEPTH + 2, {"var": "accumulator"}), 0),  # past the bound: not counted
    ],
)
def test_accumulator_copies(step: Any, copies: int) -> None:
    assert accumulator_copies(step, {"shared": {"var": "accumulator"}}) == copies


# --- fractional slow paths: they must agree with the fast ones -----------------------------


KEYS = [f"user-{i}" for i in range(64)]


@pytest.mark.parametrize("version", [V1, V2, V3])
def test_computed_weights_bucket_as_constant_ones(version: FractionalVersion) -> None:
    fixed = {"fractional": [{"var": "k"}, ["a", 30], ["b", 70]]}
    computed = {"fractional": [{"var": "k"}, ["a", {"var": "w"}], ["b", 70]]}
    for key in KEYS:
        expected = run(fixed, {"k": key}, version)
        assert expected in ("a", "b")
        assert run(computed, {"k": key, "w": 30}, version) == expected


@pytest.mark.parametrize("version", [V1, V2, V3])
def test_shorthand_with_computed_weights_buckets_as_constant_ones(
    version: FractionalVersion,
) -> None:
    fixed = {"fractional": [["a", 30], ["b", 70]]}
    computed = {"fractional": [["a", {"var": "w"}], ["b", 70]]}
    for key in KEYS:
        expected = run(fixed, {"targetingKey": key}, version)
        assert expected in ("a", "b")
        assert run(computed, {"targetingKey": key, "w": 30}, version) == expected
    assert run(computed, {"targetingKey": "u", "w": "x"}, version) is None


@pytest.mark.parametrize("version", [V1, V2])
def test_v1_v2_without_a_string_bucket_by_the_targeting_key(version: FractionalVersion) -> None:
    """Go's parser: a null first argument is skipped, the flag key + targeting key used."""
    computed = {"fractional": [{"var": "absent"}, ["a", {"var": "w"}], ["b", 70]]}
    shorthand = {"fractional": [["a", 30], ["b", 70]]}
    for key in KEYS:
        data = {"targetingKey": key, "w": 30}
        assert run(computed, data, version) == run(shorthand, data, version)
    assert run(computed, {"w": 30}, version) is None  # no targeting key either


def test_v3_dynamic_paths() -> None:
    computed = {"fractional": [{"var": "k"}, ["a", {"var": "w"}], ["b", 70]]}
    assert run(computed, {"w": 30}) is None  # nothing to bucket by
    assert run(computed, {"k": "u", "w": "x"}) is None  # weights unusable
    pair = {"fractional": [{"var": "pair"}, ["a", {"var": "w"}], ["b", 70]]}
    assert run(pair, {"pair": ["a", 30], "targetingKey": "u", "w": 30}) in ("a", "b")


@pytest.mark.parametrize("version", [V1, V2, V3])
def test_unencodable_text_is_not_bucketed(version: FractionalVersion) -> None:
    rule = {"fractional": [{"var": "k"}, ["a", 50], ["b", 50]]}
    assert run(rule, {"k": LONE_SURROGATE}, version) is None


# --- bucketing ----------------------------------------------------------------------------


def test_hashes_of_unencodable_values_are_none() -> None:
    assert bucketing.hash_v1(LONE_SURROGATE) is None
    assert bucketing.hash_v2(LONE_SURROGATE) is None
    assert bucketing.hash_after(b"\x82", LONE_SURROGATE) is None
    for value in (
        [LONE_SURROGATE],
        {LONE_SURROGATE: 1},
        {"a": object()},
        object(),
        _nested(70, 1),
    ):
        assert bucketing.hash_v3(value) is None, value


def test_v1_bucket_past_the_weights_is_none() -> None:
    assert bucketing.bucket_v1(2**31 - 1, [1, 1], 3) is None


# --- coerce -------------------------------------------------------------------------------


def test_coercions_at_their_edges() -> None:
    assert coerce.truthy((1,)) is True  # not JSON: truthy, like any object
    assert math.isnan(coerce.to_number("inf"))
    assert coerce.fit_number(10**400) == math.inf
    assert coerce.fit_number(-(10**400)) == -math.inf
    assert coerce.to_string((1, 2)) == "(1, 2)"
    assert coerce.loose_equals([1], "1") is True
    assert coerce.loose_equals({"a": 1}, [1]) is False
    assert coerce.substr("abc", "x", None) == "abc"
    assert coerce.substr("abc", 1, -math.inf) == ""
    assert coerce.substr("abc", 1, math.inf) == "bc"


def test_same_json_walks_structures() -> None:
    budget.reset()
    shared = [1, {"a": [2, 3]}]
    assert coerce.same_json(shared, [1, {"a": [2, 3]}]) is True
    assert coerce.same_json([shared, shared], [shared, shared]) is True
    assert coerce.same_json([1, 2], [1]) is False
    assert coerce.same_json({"a": 1}, {"b": 1}) is False
    assert coerce.same_json([[1]], [{"a": 1}]) is False
    assert coerce.strict_equals([1, 2], [1, 2]) is True


def test_same_json_stops_at_the_budget() -> None:
    budget.METER.left = 10 * budget.STEP_COST
    try:
        with pytest.raises(budget.BudgetExceededError):
            coerce.same_json(list(range(100)), list(range(100)))
    finally:
        budget.reset()


# --- rules, problems, refs ----------------------------------------------------------------


def test_var_indexes() -> None:
    assert rules.get_var(["a", "b"], 1.5) is None
    assert rules.get_var(["a"], -1, "d") == "d"
    assert rules.get_var("abc", 1) == "b"


def test_paths_of_odd_keys() -> None:
    assert json_path(["flags", "odd key", 0]) == '$.flags["odd key"][0]'
    assert json_path([LONE_SURROGATE]) == '$["\\\\ud800"]'
    assert json_path([None]) == '$["None"]'


def test_inline_refs_resolves_and_refuses() -> None:
    evaluators = {"a": {"$ref": "b"}, "b": [1, {"var": "x"}], "loop": {"$ref": "loop"}}
    assert inline_refs({"in": [1, {"$ref": "a"}]}, evaluators) == {"in": [1, [1, {"var": "x"}]]}
    with pytest.raises(RefError, match="cycle"):
        inline_refs({"$ref": "loop"}, evaluators)
    with pytest.raises(RefError, match="unknown evaluator"):
        inline_refs({"$ref": 1}, evaluators)
    doubling = {f"e{i}": [{"$ref": f"e{i + 1}"}, {"$ref": f"e{i + 1}"}] for i in range(20)}
    doubling["e20"] = 1
    with pytest.raises(RefError, match="more than 10000 nodes"):
        inline_refs({"$ref": "e0"}, doubling)


# --- compile, evaluate --------------------------------------------------------------------

FLAG = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}


class _Failing(Mapping[str, Any]):
    """A context whose lookups fail: a bug's stand-in, which must not escape evaluation."""

    def __getitem__(self, key: str) -> Any:
        raise ValueError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def test_an_exception_in_targeting_resolves_to_an_error() -> None:
    flag = compile_flag("f", {**FLAG, "targeting": {"if": [{"var": "x"}, "on", "off"]}})
    assert isinstance(flag, CompiledFlag)
    resolution = evaluate(flag, _Failing(), 0)
    assert resolution.error_code is ErrorCode.GENERAL
    assert resolution.error_message == "targeting failed: ValueError"


def test_tolerated_evaluator_problems_are_kept_as_warnings() -> None:
    document = {"$evaluators": {"x": {"$ref": "y"}, "y": {"==": [1, 1]}}, "flags": {"f": FLAG}}
    compiled, problems = compile_flag_set(document)
    assert problems == []
    assert [warning.path for warning in compiled["f"].warnings] == ["$.$evaluators.x"]


def test_flag_set_metadata_must_be_an_object() -> None:
    result = compile_flag("f", FLAG, flag_set_metadata=cast(Any, [1]))
    assert [problem.path for problem in cast(list[Any], result)] == ["$.<flag set>.metadata"]


def test_typed_evaluation_without_a_default_keeps_the_resolution() -> None:
    resolution = evaluate_typed(None, {}, 0, bool, flag_key="absent")
    assert resolution.error_code is ErrorCode.FLAG_NOT_FOUND and resolution.value is None
