"""The shape of a compiled rule and the pieces every operation needs: constants and ``var``.

A ``Rule`` is a function of the data (the evaluation context, or an array item inside
``map``/``filter``/...) returning a JSON value; it never raises on JSON input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from app.engine.coerce import to_string

__all__ = [
    "Rule",
    "constant",
    "get_var",
    "is_constant",
    "plain_var_key",
    "var_rule",
]

Rule = Callable[[Any], Any]


def is_constant(node: Any) -> bool:
    """True for literals: values, arrays of literals, objects that are not one operation.

    Iterative, so hostile nesting cannot exhaust the stack before the depth bound applies.
    """
    pending = [node]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, Mapping) and len(item) == 1:
            return False
    return True


def constant(value: Any) -> Rule:
    """A rule that always yields ``value``."""
    return lambda data: value


def get_var(data: Any, key: Any, default: Any = None) -> Any:
    """JsonLogic ``var`` in full: dotted paths, array indexes, ``length``, whole data."""
    if key is None or key == "":
        return data
    if isinstance(key, int | float):
        if isinstance(data, list | str):
            if isinstance(key, float) and not key.is_integer():
                return default
            index = int(key)
            if index < 0 or index >= len(data):
                return default
            return data[index]
        return default
    for part in to_string(key).split("."):
        if isinstance(data, Mapping):
            data = data.get(part)
        elif isinstance(data, list | str):
            if part == "length":
                return len(data)
            if not part.isdecimal() or not part.isascii() or str(int(part)) != part:
                return default
            index = int(part)
            if index >= len(data):
                return default
            data = data[index]
        else:
            return default
    return default if data is None else data


def var_rule(key: str) -> Rule:
    """``{"var": key}`` for a constant non-empty key, with a dict fast path."""
    if "." not in key:

        def plain(data: Any) -> Any:
            if data.__class__ is dict:
                return data.get(key)
            return get_var(data, key)

        return plain
    parts = tuple(key.split("."))

    def dotted(data: Any) -> Any:
        value = data
        for part in parts:
            if value.__class__ is dict:
                value = value.get(part)
            else:
                return get_var(data, key)
        return value

    return dotted


def plain_var_key(node: Any) -> str | None:
    """The key of ``{"var": "key"}`` when it is a plain top-level name (no dots, no default)."""
    if not isinstance(node, Mapping) or len(node) != 1 or "var" not in node:
        return None
    key = node["var"]
    if isinstance(key, list) and len(key) == 1:
        key = key[0]
    if isinstance(key, str) and key and "." not in key and not key.startswith("$flagd"):
        return key
    return None
