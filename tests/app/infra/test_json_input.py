"""Untrusted JSON at the edge: strict, and no deeper than MAX_DEPTH (app.infra.json_input)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.infra.json_input import MAX_DEPTH, Unacceptable, nested_deeper, parse_json


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def arrays(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def test_the_bound_is_inclusive() -> None:
    assert parse_json(arrays(MAX_DEPTH)) == json.loads(arrays(MAX_DEPTH))
    refused = parse_json(arrays(MAX_DEPTH + 1))
    assert refused == Unacceptable(f"nested deeper than {MAX_DEPTH} levels", too_deep=True)


def test_objects_count_like_arrays_and_text_works_like_bytes() -> None:
    deep = '{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1)
    assert isinstance(parse_json(deep), Unacceptable)
    assert isinstance(parse_json(deep.encode()), Unacceptable)


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"\xff", b"NaN", b"[Infinity]", b'"\\ud800"', b"[1e400]", b"[" * 100_000],
    ids=["empty", "truncated", "not-utf8", "nan", "infinity", "lone-surrogate", "overflow", "100k"],
)
def test_what_could_not_be_written_back_is_not_json(raw: bytes) -> None:
    refused = parse_json(raw)
    assert isinstance(refused, Unacceptable) and refused.message.startswith("not JSON")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=40,
)


@given(json_values, st.integers(0, 8))
def test_the_walk_agrees_with_the_depth(value: Any, limit: int) -> None:
    raw = json.dumps(value)
    assert nested_deeper(raw, value, limit) == (depth(value) > limit)
