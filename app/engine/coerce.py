"""JsonLogic's JavaScript-flavoured coercions (truthiness, numbers, strings, equality).

These follow the JsonLogic implementation that flagd's Python evaluator
(``openfeature-flagd-core``) runs, so that our results agree with it; where that
implementation raises (division by zero, ``int(inf)``) or leaks a Python spelling
(``True`` for a boolean), we return what JavaScript would, see docs/engine.md.
None of these functions raises on JSON input.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from math import isnan
from typing import Any, Final

from app.engine.budget import MAX_STRING_CHARS, METER, STEP_COST, charge, too_long

__all__ = [
    "NAN",
    "fit_number",
    "greater",
    "greater_or_equal",
    "less",
    "less_or_equal",
    "loose_equals",
    "same_json",
    "strict_equals",
    "substr",
    "to_number",
    "to_string",
    "truthy",
]

NAN = float("nan")

#: Integers beyond this magnitude become floats after arithmetic, as in flagd (float64), so
#: nested ``*`` cannot build numbers with millions of digits.
_INT_BOUND = 2**64

_NOT_A_NUMBER_WORDS = frozenset({"inf", "-inf", "+inf"})


def truthy(value: Any) -> bool:
    """JsonLogic truthiness: ``[]``, ``""``, ``0``, NaN and null are false, objects true."""
    if value.__class__ is bool:
        return value
    if value is None:
        return False
    if isinstance(value, float):
        return value == value and value != 0.0
    if isinstance(value, Mapping):
        return True
    if isinstance(value, str | int | list):
        return bool(value)
    return True


def to_number(value: Any) -> int | float:
    """JavaScript's ``Number(value)`` as JsonLogic applies it; NaN when not numeric."""
    if isinstance(value, int | float):
        return value
    if value is None:
        return 0
    if isinstance(value, str):
        if value.strip().lower() in _NOT_A_NUMBER_WORDS:
            return NAN
        try:
            return float(value)
        except ValueError:
            return NAN
    if isinstance(value, list):
        while isinstance(value, list):  # a loop: arrays built by reduce nest arbitrarily
            if not value:
                return 0
            if len(value) > 1:
                return NAN
            value = value[0]
        return to_number(value)
    return NAN


def fit_number(value: int | float) -> int | float:
    """Turn integers too large for flagd's float64 world into floats (inf when huge)."""
    if value.__class__ is int and not -_INT_BOUND <= value <= _INT_BOUND:
        try:
            return float(value)
        except OverflowError:
            return float("inf") if value > 0 else float("-inf")
    return value


def to_string(value: Any) -> str:
    """JavaScript's ``String(value)`` as JsonLogic's ``cat`` applies it."""
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        return f"{value:.15g}"
    if isinstance(value, int):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, list):
        return _list_text(value)
    if isinstance(value, Mapping):
        return "[object Object]"
    return str(value)


_END: Any = object()


def _list_text(value: list[Any]) -> str:
    """``String(array)``: items joined by commas, nested arrays flattened alike.

    A loop, not recursion, bounded by MAX_STRING_CHARS and charged to the evaluation's
    budget per element visited: an array whose parts are shared (``[x, x]`` where ``x``
    is ``[y, y]``...) is small in memory but exponential as text.
    """
    parts: list[str] = []
    size = 0
    visited = 0
    pending = [iter(value)]
    first = [True]
    while pending:
        item = next(pending[-1], _END)
        if item is _END:
            pending.pop()
            first.pop()
            continue
        visited += 1
        if first[-1]:
            first[-1] = False
        else:
            parts.append(",")
            size += 1
        if isinstance(item, list):
            pending.append(iter(item))
            first.append(True)
            continue
        text = to_string(item)
        parts.append(text)
        size += len(text)
        if size + visited > MAX_STRING_CHARS:
            raise too_long("an array as text", size, MAX_STRING_CHARS, "characters")
    charge(size + visited * STEP_COST, "an array as text")
    return "".join(parts)


def loose_equals(a: Any, b: Any) -> bool:
    """JsonLogic ``==``: JavaScript's abstract equality on JSON values."""
    a_type = a.__class__
    if a_type is b.__class__:
        if a_type is list or a_type is dict:
            return a is b
        return bool(a == b)
    if isinstance(a, int | float):
        return bool(a == (b if isinstance(b, int | float) else to_number(b)))
    if isinstance(b, int | float):
        return bool(to_number(a) == b)
    if a is None or b is None:
        return False
    if isinstance(a, str):
        return isinstance(b, list | Mapping) and a == to_string(b)
    if isinstance(a, list | Mapping):
        if isinstance(b, str):
            return to_string(a) == b
        return False
    return False


def strict_equals(a: Any, b: Any) -> bool:
    """JsonLogic ``===`` as flagd's Python evaluator applies it (Python equality).

    Arrays and objects are compared by ``same_json``, which charges the budget per
    element: Python's own ``==`` would walk shared parts once per path, without bound.
    """
    if isinstance(a, list | Mapping) and isinstance(b, list | Mapping):
        return same_json(a, b)
    return bool(a == b)


def same_json(a: Any, b: Any) -> bool:
    """Python equality of two JSON values, walked in a loop and charged per element."""
    pending = [(a, b)]
    visited = 0
    affordable = METER.left // STEP_COST
    try:
        while pending:
            x, y = pending.pop()
            visited += 1
            if visited > affordable:
                break  # charged below, which raises
            if x is y:
                continue
            if isinstance(x, list) and isinstance(y, list):
                if len(x) != len(y):
                    return False
                pending.extend(zip(x, y, strict=True))
            elif isinstance(x, Mapping) and isinstance(y, Mapping):
                if x.keys() != y.keys():
                    return False
                pending.extend((x[key], y[key]) for key in x)
            elif isinstance(x, list | Mapping) or isinstance(y, list | Mapping) or x != y:
                return False
    finally:
        charge(visited * STEP_COST, "comparing arrays or objects")
    return True


def _ordering(compare: Callable[[Any, Any], Any], symbol: str) -> Callable[[Any, Any], bool]:
    """JsonLogic's ordering ``symbol`` with its coercions, built once per operator.

    Numeric when either side is a number, else string when either side is a string, else
    numeric. ``compare`` is the plain operator (``operator.lt``...): one body for all four.
    """

    def ordered(a: Any, b: Any) -> bool:
        if isinstance(a, int | float):
            return bool(compare(a, to_number(b)))
        if isinstance(b, int | float):
            return bool(compare(to_number(a), b))
        if isinstance(a, str):
            return bool(compare(a, to_string(b)))
        if isinstance(b, str):
            return bool(compare(to_string(a), b))
        return bool(compare(to_number(a), to_number(b)))

    ordered.__name__ = ordered.__qualname__ = compare.__name__
    ordered.__doc__ = f"JsonLogic ``{symbol}`` on any two JSON values."
    return ordered


less: Final = _ordering(operator.lt, "<")
less_or_equal: Final = _ordering(operator.le, "<=")
greater: Final = _ordering(operator.gt, ">")
greater_or_equal: Final = _ordering(operator.ge, ">=")


def substr(value: Any, start: Any, length: Any) -> str:
    """JsonLogic ``substr``: negative start counts from the end, negative length trims."""
    text = to_string(value)
    size = len(text)
    index = to_number(start)
    if isnan(index):
        begin = 0
    elif index < 0:
        begin = 0 if -index >= size else size - int(-index)
    else:
        begin = size if index >= size else int(index)
    if length is None:
        return text[begin:]
    count = to_number(length)
    if isnan(count) or count == float("-inf"):
        return ""
    if count == float("inf"):
        return text[begin:]
    n = int(count)
    if n < 0:
        return text[begin : max(size + n, begin)]
    return text[begin : begin + n]
