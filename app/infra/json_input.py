"""Untrusted JSON, parsed the same way at every edge: HTTP bodies and `flag-changes` records.

Strict JSON (orjson, as `app.infra.records.loads`: no NaN, no lone surrogates), at most MAX_DEPTH
containers deep. Deeper documents are refused here, before any code recurses over them:
`dataclasses.asdict` of a change (~4 frames a level), `json.dumps` of a context, comparisons
in the engine each raise RecursionError somewhere far from the edge, which was a 500 on the
API and would be a crash in an agent. The engine has its own, tighter bound on flag
definitions (`app.engine.schema.MAX_DEPTH`), which answers with the path of the problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from app.infra.records import loads

__all__ = ["MAX_DEPTH", "Unacceptable", "nested_deeper", "parse_json"]

# Objects and arrays inside one another; a scalar is depth 0, `[]` depth 1.
MAX_DEPTH: Final = 64


@dataclass(frozen=True, slots=True)
class Unacceptable:
    """Why bytes are not an acceptable JSON document (`too_deep`: valid JSON, nested too far)."""

    message: str
    too_deep: bool = False


def parse_json(raw: bytes | str) -> Any:
    """The JSON value of `raw`, or an `Unacceptable` saying why there is none."""
    try:
        value = loads(raw)
    except orjson.JSONDecodeError as exc:  # also raised for bytes that are not UTF-8
        return Unacceptable(f"not JSON: {exc}")
    # Each level costs two bytes ("[]"), so a short document (most evaluation bodies, on the
    # hot path) cannot nest too deep and is not looked at again.
    if len(raw) > 2 * MAX_DEPTH and nested_deeper(raw, value, MAX_DEPTH):
        return Unacceptable(f"nested deeper than {MAX_DEPTH} levels", too_deep=True)
    return value


def nested_deeper(raw: bytes | str, value: Any, limit: int) -> bool:
    """Whether `value`, parsed from `raw`, nests more than `limit` containers.

    A document with at most `limit` brackets cannot nest deeper, so most bodies are cleared
    by two C-speed counts; the others are walked without recursion.
    """
    if isinstance(raw, bytes):
        brackets = raw.count(b"{") + raw.count(b"[")
    else:
        brackets = raw.count("{") + raw.count("[")
    if brackets <= limit:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
