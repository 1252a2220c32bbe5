"""compile_flag / compile_flag_set: what loads, what degrades, what is rejected."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.engine import (
    FRACTIONAL_VERSION_KEY,
    CompiledFlag,
    ErrorCode,
    FractionalVersion,
    Problem,
    Reason,
    compile_flag,
    compile_flag_set,
    evaluate,
)
from tests.engine import generate

CARDS = {"clubs": "clubs", "diamonds": "diamonds", "hearts": "hearts", "spades": "spades"}
#: flagd-testbed's fractional-flag; the expected variants per generation are its vectors.
SUITS = {
    "state": "ENABLED",
    "variants": {**CARDS, "wild": "wild"},
    "defaultVariant": "wild",
    "targeting": {
        "fractional": [
            {"cat": [{"var": "$flagd.flagKey"}, {"var": "user.name"}]},
            ["clubs", 25],
            ["diamonds", 25],
            ["hearts", 25],
            ["spades", 25],
        ]
    },
}
VECTORS = {  # name -> variant under v1, v2, v3
    "jack": ("spades", "hearts", "diamonds"),
    "queen": ("clubs", "spades", "diamonds"),
    "ten": ("diamonds", "clubs", "clubs"),
    "nine": ("hearts", "diamonds", "clubs"),
    "3": ("diamonds", "clubs", "spades"),
}


def _compiled(key: str, definition: dict[str, Any], **kwargs: Any) -> CompiledFlag:
    flag = compile_flag(key, definition, **kwargs)
    assert isinstance(flag, CompiledFlag), flag
    return flag


def _with_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    return {**SUITS, "metadata": metadata}


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_fractional_defaults_to_v3(name: str) -> None:
    flag = _compiled("fractional-flag", SUITS)
    assert flag.fractional_version is FractionalVersion.V3
    assert evaluate(flag, {"user": {"name": name}}, 0).variant == VECTORS[name][2]


@pytest.mark.parametrize("name", sorted(VECTORS))
@pytest.mark.parametrize(("version", "column"), [("v1", 0), ("v2", 1), ("v3", 2)])
def test_flag_metadata_pins_a_fractional_generation(name: str, version: str, column: int) -> None:
    flag = _compiled("fractional-flag", _with_metadata({FRACTIONAL_VERSION_KEY: version}))
    assert evaluate(flag, {"user": {"name": name}}, 0).variant == VECTORS[name][column]


def test_flag_set_metadata_pins_and_flag_metadata_wins() -> None:
    document = {
        "metadata": {FRACTIONAL_VERSION_KEY: "v1"},
        "flags": {
            "fractional-flag": SUITS,
            "pinned": _with_metadata({FRACTIONAL_VERSION_KEY: "v2"}),
        },
    }
    flags, problems = compile_flag_set(document)
    assert problems == []
    assert flags["fractional-flag"].fractional_version is FractionalVersion.V1
    assert flags["pinned"].fractional_version is FractionalVersion.V2


def test_unknown_fractional_pin_is_a_problem() -> None:
    result = compile_flag("f", _with_metadata({FRACTIONAL_VERSION_KEY: "v9"}))
    assert result == [Problem(f"$.metadata.{FRACTIONAL_VERSION_KEY}", "must be one of v1, v2, v3")]


def test_a_definition_flagd_cannot_load_is_rejected_with_paths() -> None:
    result = compile_flag("f", {"state": "ON", "variants": {}})
    assert isinstance(result, list)
    assert {problem.path for problem in result} >= {"$.state", "$.variants"}


def test_schema_breaking_targeting_still_compiles_with_warnings() -> None:
    definition = {
        "state": "ENABLED",
        "variants": {"a": "a", "b": "b"},
        "defaultVariant": "a",
        "targeting": {"sem_ver": [{"var": "v"}, "===", "1.0.0"]},
    }
    flag = _compiled("f", definition)
    assert flag.warnings
    assert evaluate(flag, {"v": "1.0.0"}, 0).reason is Reason.DEFAULT


def test_unknown_operation_compiles_to_parse_error() -> None:
    definition = {
        "state": "ENABLED",
        "variants": {"a": 1, "b": 2},
        "defaultVariant": "b",
        "targeting": {"invalid": ["x"]},
    }
    result = evaluate(_compiled("f", definition), {}, 0)
    assert (result.reason, result.error_code) == (Reason.ERROR, ErrorCode.PARSE_ERROR)


def test_flag_set_rejects_only_the_bad_flag() -> None:
    document = {
        "flags": {
            "good": {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"},
            "bad flag": {"state": "MAYBE", "variants": {"on": True}},
        }
    }
    flags, problems = compile_flag_set(document)
    assert list(flags) == ["good"]
    assert problems and all(p.path.startswith('$.flags["bad flag"]') for p in problems)


def test_bad_flag_set_metadata_rejects_the_whole_set() -> None:
    document = {
        "metadata": {"owner": {"nested": "no"}},
        "flags": {"good": {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"}},
    }
    flags, problems = compile_flag_set(document)
    assert flags == {}
    assert problems


def test_evaluators_are_shared_through_ref() -> None:
    document = {
        "$evaluators": {"staff": {"ends_with": [{"var": "email"}, "@corp.example"]}},
        "flags": {
            "f": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "targeting": {"if": [{"$ref": "staff"}, "on", "off"]},
            }
        },
    }
    flags, _ = compile_flag_set(document)
    assert evaluate(flags["f"], {"email": "a@corp.example"}, 0).value is True


def test_compiled_flag_does_not_alias_the_definition() -> None:
    definition = {"state": "ENABLED", "variants": {"o": {"x": 1}}, "defaultVariant": "o"}
    flag = _compiled("f", definition)
    definition["variants"]["o"]["x"] = 2
    assert flag.variants["o"] == {"x": 1}


def test_an_unhashable_sem_ver_operator_compiles_to_no_match() -> None:
    """Found by the never-raises property: `[]` as the operator raised TypeError."""
    definition = {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"if": [{"sem_ver": [None, [], None]}, "on", "off"]},
    }
    flag = compile_flag("f", definition)
    assert isinstance(flag, CompiledFlag)
    assert evaluate(flag, {}, 0, "f").variant == "off"


# --- hostile definitions: what a replica may read from flags-changelog -------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "state",
                    "variants",
                    "defaultVariant",
                    "targeting",
                    "metadata",
                    "if",
                    "var",
                    "fractional",
                    "",
                    "0",
                    "x\n",
                ]
            )
            | st.text(max_size=4),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(definition=_json, seed=st.integers(0, 2**32))
def test_compile_of_hostile_definitions_never_raises(definition: Any, seed: int) -> None:
    """A record written straight to flags-changelog can hold anything: the replica's
    compile returns a flag or problems with paths (PARSE_ERROR in the replica), never raises."""
    rng = random.Random(seed)
    for candidate in (definition, {**generate.flag(rng), "targeting": definition}):
        result = compile_flag("hostile", candidate)
        if isinstance(result, list):
            assert result and all(p.path.startswith("$") for p in result)
        else:
            evaluate(result, {"targetingKey": "k", "email": "a@b.c"}, 0)


@pytest.mark.parametrize(
    "definition",
    [{"state": "ENABLED", "variants": {"on": b"x"}}, {"state": "ENABLED", "variants": {None: 1}}],
)
def test_compile_of_non_json_values_gives_problems(definition: Any) -> None:
    result = compile_flag("odd", definition)
    assert isinstance(result, list) and result[0].path.startswith("$.variants")
