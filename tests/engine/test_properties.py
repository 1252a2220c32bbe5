"""Properties: compiling and evaluating anything returns a value, never an exception.

Arbitrary JSON as definitions, JsonLogic-shaped rules built from every operation (and
some that do not exist) with arbitrary arguments, arbitrary contexts. The engine's
last-resort handler turns an exception into a GENERAL error whose message starts with
"targeting failed"; seeing one here means a bug, so the properties forbid it too.
"""

from __future__ import annotations

import time
from typing import Any

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.engine import (
    CompiledFlag,
    Problem,
    Resolution,
    bucketing,
    compile_flag,
    compile_flag_set,
    evaluate,
)
from app.engine.jsonlogic import MAX_DEPTH, MAX_NODES

OPERATIONS = [
    "var", "missing", "missing_some", "if", "?:", "==", "===", "!=", "!==", "!", "!!",
    "or", "and", "<", "<=", ">", ">=", "max", "min", "+", "-", "*", "/", "%", "in", "cat",
    "substr", "merge", "map", "filter", "reduce", "all", "none", "some", "fractional",
    "sem_ver", "starts_with", "ends_with", "$ref", "no_such_op",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["email", "user.name", "targetingKey", "$flagd.timestamp", "1.2.3", "v2"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
rules = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.builds(
            lambda op, args: {op: args},
            st.sampled_from(OPERATIONS),
            st.one_of(inner, st.lists(inner, max_size=4)),
        ),
    ),
    max_leaves=25,
)
contexts = st.dictionaries(
    st.sampled_from(["email", "user", "targetingKey", "version", "tags", "x", "$flagd"]),
    json_values,
    max_size=5,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _flag(targeting: Any) -> dict[str, Any]:
    return {
        "state": "ENABLED",
        "variants": {"on": True, "off": False, "true": True, "1": False},
        "defaultVariant": "off",
        "targeting": targeting,
    }


def _sound(resolution: Resolution) -> None:
    assert isinstance(resolution, Resolution)
    assert not (resolution.error_message or "").startswith("targeting failed"), resolution


@SETTINGS
@given(definition=json_values)
def test_compiling_arbitrary_json_returns_a_flag_or_problems(definition: Any) -> None:
    result = compile_flag("key", definition)
    assert isinstance(result, CompiledFlag) or all(isinstance(p, Problem) for p in result)


@SETTINGS
@given(document=json_values)
def test_compiling_an_arbitrary_flag_set_returns_flags_and_problems(document: Any) -> None:
    flags, problems = compile_flag_set(document)
    assert all(isinstance(flag, CompiledFlag) for flag in flags.values())
    assert all(isinstance(problem, Problem) for problem in problems)


@SETTINGS
@given(targeting=rules, context=contexts, now=st.integers(0, 2**40))
def test_evaluating_arbitrary_rules_and_contexts_never_raises(
    targeting: Any, context: dict[str, Any], now: int
) -> None:
    flag = compile_flag("key", _flag(targeting), evaluators={"shared": targeting})
    if isinstance(flag, CompiledFlag):
        _sound(evaluate(flag, context, now))


@SETTINGS
@given(targeting=rules, context=contexts)
def test_fractional_over_arbitrary_values_never_raises(
    targeting: Any, context: dict[str, Any]
) -> None:
    definition = _flag({"fractional": [targeting, ["on", 50], ["off", 50]]})
    for version in ("v1", "v2", "v3"):
        definition["metadata"] = {"flagstream.fractional": version}
        flag = compile_flag("key", definition)
        assert isinstance(flag, CompiledFlag)
        _sound(evaluate(flag, context, 0))


@SETTINGS
@given(value=json_values)
def test_cbor_encoding_matches_cbor2_canonical(value: Any) -> None:
    """v3 hashes our own canonical CBOR; it must be byte-identical to flagd-core's."""
    ours = bucketing.cbor(value)
    try:
        theirs = cbor2.dumps(_normalise(value), canonical=True)
    except (ValueError, TypeError, UnicodeEncodeError):
        assert ours is None
        return
    assert ours == theirs


def _normalise(value: Any) -> Any:
    """flagd-core's number normalisation before CBOR (integral floats -> ints)."""
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, float) and value.is_integer() and -(2**63) <= value <= 2**64 - 1:
        return int(value)
    return value


@SETTINGS
@given(
    hashed=st.integers(0, 2**32 - 1),
    weights=st.lists(st.integers(0, 2**20), min_size=1, max_size=8),
)
def test_thresholds_pick_what_flagd_integer_bucketing_picks(
    hashed: int, weights: list[int]
) -> None:
    bounds = bucketing.thresholds(weights)
    total = sum(weights)
    if total == 0:
        assert bounds is None
        return
    assert bounds is not None
    bucket = (hashed * total) >> 32
    cumulative, expected = 0, None
    for index, weight in enumerate(weights):
        cumulative += weight
        if bucket < cumulative:
            expected = index
            break
    assert bucketing.pick(bounds, hashed) == expected


def test_deep_targeting_is_rejected_not_recursed() -> None:
    rule: Any = {"var": "x"}
    for _ in range(MAX_DEPTH + 10):
        rule = {"!": [rule]}
    result = compile_flag("deep", _flag(rule))
    assert isinstance(result, list) and result


def test_huge_targeting_is_rejected() -> None:
    rule = {"or": [{"==": [{"var": "x"}, i]} for i in range(MAX_NODES)]}
    result = compile_flag("huge", _flag(rule))
    assert isinstance(result, list)
    assert any("nodes" in problem.message for problem in result)


def test_nested_array_operations_are_bounded() -> None:
    inner = {"some": [{"var": "a"}, {"some": [{"var": "b"}, {"==": [{"var": ""}, 1]}]}]}
    assert isinstance(compile_flag("ok", _flag({"if": [inner, "on", "off"]})), CompiledFlag)
    triple = {"map": [{"var": "a"}, {"map": [{"var": "b"}, {"map": [{"var": "c"}, 1]}]}]}
    assert isinstance(compile_flag("no", _flag(triple)), list)


def test_worst_allowed_loop_finishes_quickly() -> None:
    """The largest loop the bounds admit, over the largest array iterated, stays < ~1 s."""
    inner = {"some": [{"var": "a"}, {"some": [{"var": "a"}, {"==": [{"var": ""}, -1]}]}]}
    flag = compile_flag("loop", _flag({"if": [inner, "on", "off"]}))
    assert isinstance(flag, CompiledFlag)
    started = time.perf_counter()
    result = evaluate(flag, {"a": list(range(1_000))}, 0)
    assert result.variant == "off"
    assert time.perf_counter() - started < 5


def test_pathological_nesting_is_a_problem_not_a_crash() -> None:
    nested: Any = "on"
    for _ in range(50_000):
        nested = [nested]
    result = compile_flag("deep", _flag({"if": [True, nested, "off"]}))
    assert isinstance(result, list) and result
    document = {"$evaluators": {"x": nested}, "flags": {"f": _flag({"$ref": "x"})}}
    flags, problems = compile_flag_set(document)
    assert flags == {} and problems
