"""`fractional_split`: the split an experiment's sample-ratio check compares subjects with,
read from a flag's targeting as flagd parses it (app/experiments/design.py uses it)."""

from __future__ import annotations

from typing import Any

import pytest

from app.engine import FractionalVersion, fractional_split

V1, V3 = FractionalVersion.V1, FractionalVersion.V3
SHORTHAND = {"fractional": [["a", 25], ["b", 75]]}
BUCKET_BY = {"fractional": [{"var": "email"}, ["a", 1], ["b", 3]]}

CASES: list[tuple[str, Any, FractionalVersion, Any]] = [
    ("shorthand", SHORTHAND, V3, (("a", "b"), (25, 75))),
    ("a bucketing expression first", BUCKET_BY, V3, (("a", "b"), (1, 3))),
    ("a weight left out is 1", {"fractional": [["a"], ["b", 2]]}, V3, (("a", "b"), (1, 2))),
    ("inside an if, in rule order", {"if": [True, BUCKET_BY, SHORTHAND]}, V3, (("a", "b"), (1, 3))),
    ("the first of a list", [SHORTHAND, BUCKET_BY], V3, (("a", "b"), (25, 75))),
    (
        "v1 truncates float weights",
        {"fractional": [["a", 1.9], ["b", 3.2]]},
        V1,
        (("a", "b"), (1, 3)),
    ),
    ("v3 refuses float weights", {"fractional": [["a", 1.5], ["b", 3]]}, V3, None),
    ("a variant computed at run time", {"fractional": [[{"var": "v"}, 1], ["b", 1]]}, V3, None),
    ("weights adding up to 0", {"fractional": [["a", 0], ["b", 0]]}, V3, None),
    ("no fractional", {"if": [True, "a", "b"]}, V3, None),
    ("no targeting", None, V3, None),
    ("a string", "fractional", V3, None),
]


@pytest.mark.parametrize(
    ("targeting", "version", "split"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_the_first_constant_split_as_flagd_parses_it(
    targeting: Any, version: FractionalVersion, split: Any
) -> None:
    assert fractional_split(targeting, version) == split


def test_a_split_that_cannot_be_parsed_gives_way_to_the_next() -> None:
    targeting = {"if": [True, {"fractional": [["a", 1.5]]}, SHORTHAND]}
    assert fractional_split(targeting, V3) == (("a", "b"), (25, 75))
