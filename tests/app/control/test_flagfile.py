"""GitOps files: `$ref` inlining and the apply plan."""

from __future__ import annotations

import pytest

from app.control.flagfile import FlagFileError, flags_of, plan
from app.engine import CompiledFlag, compile_flag, compile_flag_set, evaluate

FLAG = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}


def test_refs_are_inlined_recursively() -> None:
    document = {
        "$evaluators": {"inner": {"==": [1, 1]}, "outer": {"and": [{"$ref": "inner"}, True]}},
        "flags": {"f": {**FLAG, "targeting": {"if": [{"$ref": "outer"}, "on", "off"]}}},
    }
    assert flags_of(document)["f"]["targeting"] == {
        "if": [{"and": [{"==": [1, 1]}, True]}, "on", "off"]
    }


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"flags": []},
        {"flags": {"f": 1}},
        {"flags": {"f": {**FLAG, "targeting": {"$ref": "nope"}}}},
        {
            "$evaluators": {"loop": {"$ref": "loop"}},
            "flags": {"f": {**FLAG, "targeting": {"$ref": "loop"}}},
        },
        {"$evaluators": [], "flags": {}},
    ],
)
def test_bad_files_are_refused_with_a_reason(document: object) -> None:
    with pytest.raises(FlagFileError):
        flags_of(document)


def test_plan_changes_only_what_differs() -> None:
    current = {"same": FLAG, "old": FLAG, "gone": FLAG}
    desired = {"same": FLAG, "old": {**FLAG, "defaultVariant": "on"}, "new": FLAG}
    assert plan(desired, current, prune=False) == (["new"], ["old"], [])
    assert plan(desired, current, prune=True) == (["new"], ["old"], ["gone"])
    assert plan(current, current, prune=True) == ([], [], [])


def _chain_of_refs(length: int) -> dict[str, object]:
    """A file whose flag reaches `==` through `length` evaluators, each naming the next."""
    evaluators: dict[str, object] = {f"e{i}": {"$ref": f"e{i + 1}"} for i in range(length - 1)}
    evaluators[f"e{length - 1}"] = {"==": [1, 1]}
    targeting = {"if": [{"$ref": "e0"}, "on", "off"]}
    return {"$evaluators": evaluators, "flags": {"f": {**FLAG, "targeting": targeting}}}


def test_a_reference_chain_the_engine_compiles_is_applied() -> None:
    """One resolver, one limit: 40 chained `$ref`s compile, so the file applies (was: refused
    by the file reader's own limit of 32 while the engine took 64)."""
    document = _chain_of_refs(40)
    compiled, problems = compile_flag_set(document)
    assert problems == [] and "f" in compiled
    inlined = flags_of(document)["f"]
    assert inlined["targeting"] == {"if": [{"==": [1, 1]}, "on", "off"]}
    flag = compile_flag("f", inlined)
    assert isinstance(flag, CompiledFlag)
    assert evaluate(flag, {}, 0).variant == "on"


def test_a_reference_chain_beyond_the_engine_bounds_is_refused_by_both() -> None:
    document = _chain_of_refs(70)
    compiled, problems = compile_flag_set(document)
    assert compiled == {} and "deeper than 64" in problems[0].message
    with pytest.raises(FlagFileError, match="deeper than 64"):
        flags_of(document)


def test_only_targeting_holds_references() -> None:
    """An object variant that looks like a reference is a value, as the engine reads it."""
    variants = {"on": {"$ref": "shared"}, "off": {}}
    definition = {**FLAG, "variants": variants, "targeting": {"$ref": "shared"}}
    document = {"$evaluators": {"shared": "on"}, "flags": {"f": definition}}
    assert flags_of(document)["f"] == {**definition, "targeting": "on"}
