"""evaluate / evaluate_typed: reasons, error codes and typed resolution as flagd gives them."""

from __future__ import annotations

from typing import Any

import pytest

from app.engine import (
    CompiledFlag,
    ErrorCode,
    Reason,
    compile_flag,
    evaluate,
    evaluate_typed,
)


def _flag(targeting: Any = None, **overrides: Any) -> CompiledFlag:
    definition: dict[str, Any] = {
        "state": "ENABLED",
        "variants": {"one": 1, "two": 2, "true": 3},
        "defaultVariant": "two",
        **overrides,
    }
    if targeting is not None:
        definition["targeting"] = targeting
    flag = compile_flag("f", definition, flag_set_metadata={"team": "core", "owner": "set"})
    assert isinstance(flag, CompiledFlag), flag
    return flag


def test_missing_flag_is_flag_not_found() -> None:
    result = evaluate(None, {}, 0, flag_key="nope")
    assert (result.reason, result.error_code) == (Reason.ERROR, ErrorCode.FLAG_NOT_FOUND)


def test_static_flag_is_prebuilt() -> None:
    flag = _flag()
    first, second = evaluate(flag, {}, 0), evaluate(flag, {"x": 1}, 5)
    assert first is second
    assert (first.value, first.variant, first.reason) == (2, "two", Reason.STATIC)


def test_disabled_flag_leaves_the_value_to_the_caller() -> None:
    result = evaluate_typed(_flag(state="DISABLED"), {}, 0, int, default=7)
    assert (result.value, result.variant, result.reason) == (7, None, Reason.DISABLED)


@pytest.mark.parametrize(
    ("targeting", "value", "variant", "reason", "code"),
    [
        ({"if": [True, "one", "two"]}, 1, "one", Reason.TARGETING_MATCH, None),
        ({"if": [True, None, "one"]}, 2, "two", Reason.DEFAULT, None),
        ({"if": [True, True, "one"]}, 3, "true", Reason.TARGETING_MATCH, None),
        ({"if": [True, "three", "one"]}, None, None, Reason.ERROR, ErrorCode.GENERAL),
        ({"fractional": [None, ["one"]]}, 2, "two", Reason.DEFAULT, None),
    ],
)
def test_targeting_outcomes(
    targeting: Any, value: Any, variant: str | None, reason: Reason, code: ErrorCode | None
) -> None:
    result = evaluate(_flag(targeting), {}, 0)
    assert (result.value, result.variant, result.reason, result.error_code) == (
        value,
        variant,
        reason,
        code,
    )


def test_no_default_variant_means_caller_default() -> None:
    flag = _flag({"if": [False, "one"]}, defaultVariant=None)
    result = evaluate_typed(flag, {}, 0, int, default=42)
    assert (result.value, result.variant, result.reason) == (42, None, Reason.DEFAULT)


def test_timestamp_comes_from_now() -> None:
    flag = _flag({"if": [{">": [{"var": "$flagd.timestamp"}, 1000]}, "one", "two"]})
    assert evaluate(flag, {}, 999).variant == "two"
    assert evaluate(flag, {}, 1001).variant == "one"


def test_flag_key_is_available_to_rules() -> None:
    flag = _flag({"if": [{"==": [{"var": "$flagd.flagKey"}, "f"]}, "one", "two"]})
    assert evaluate(flag, {}, 0).variant == "one"


def test_metadata_merges_flag_over_flag_set() -> None:
    flag = _flag(metadata={"owner": "flag"})
    assert dict(evaluate(flag, {}, 0).metadata) == {"team": "core", "owner": "flag"}


@pytest.mark.parametrize(
    ("expected", "ok"),
    [(int, True), (float, True), (str, False), (bool, False), (object, False)],
)
def test_typed_resolution(expected: type, ok: bool) -> None:
    result = evaluate_typed(_flag(), {}, 0, expected, default="fallback")
    if ok:
        assert result.error_code is None
        assert type(result.value) is expected
    else:
        assert (result.error_code, result.value) == (ErrorCode.TYPE_MISMATCH, "fallback")


def test_booleans_are_not_numbers() -> None:
    flag = compile_flag("b", {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"})
    assert isinstance(flag, CompiledFlag)
    assert evaluate_typed(flag, {}, 0, int).error_code is ErrorCode.TYPE_MISMATCH
    assert evaluate_typed(flag, {}, 0, bool).value is True
