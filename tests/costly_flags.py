"""Flags that cost a worker far more than their size, shared by the tests that send them."""

from __future__ import annotations

from typing import Any

from tests.conftest import flag


def shared_maps(width: int, levels: int) -> dict[str, Any]:
    """Maps whose items repeat the item: width ** (levels + 1) leaves sharing their parts,
    cheap to store, costly to evaluate (the engine's work budget ends it)."""
    built: dict[str, Any] = {"map": [[{"var": "s"}] * width, [{"var": ""}] * width]}
    for _ in range(levels - 1):
        built = {"map": [built, [{"var": ""}] * width]}
    return built


# Passes validation; its evaluation runs out of budget (comparing shared arrays walks them).
COSTLY = flag(targeting={"if": [{"===": [shared_maps(20, 6), shared_maps(20, 6)]}, "on", "off"]})
# Refused at validation: each step doubles the accumulator (issue 8, item 8's reproduction).
DOUBLING = {"reduce": [{"var": "arr"}, {"cat": [{"var": "accumulator"}] * 2}, "x"]}
