"""GitOps files: `$ref` inlining and the apply plan."""

from __future__ import annotations

import pytest

from app.control.flagfile import FlagFileError, flags_of, plan

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
