"""Evaluation of compiled flags: a context and a time in, a ``Resolution`` out.

Pure and synchronous: the time for ``$flagd.timestamp`` is the ``now`` argument (unix
seconds). A static flag costs an attribute lookup; a targeted one calls the closures
``compile_flag`` built. Nothing here raises on user input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from app.engine.model import CompiledFlag, ErrorCode, JsonValue, Reason, Resolution

__all__ = [
    "evaluate",
    "evaluate_typed",
    "flag_not_found",
]


def evaluate(
    flag: CompiledFlag | None,
    context: Mapping[str, JsonValue],
    now: int,
    flag_key: str = "",
) -> Resolution:
    """Resolve a flag for a context (``targetingKey`` is a key of the context).

    ``flag`` None (not in the table) gives FLAG_NOT_FOUND for ``flag_key``. The value is
    None whenever the caller's default applies (errors, DISABLED, no default variant).
    ``flag_key`` is meant to be passed by keyword; it is not keyword-only because CPython
    3.11 only specialises calls to functions without keyword-only parameters (~25% faster).
    """
    if flag is None:
        return flag_not_found(flag_key)
    static = flag.static
    if static is None:
        return flag.resolve(context, now)
    return static


def flag_not_found(flag_key: str) -> Resolution:
    """The resolution for a key that names no flag."""
    return Resolution(
        None, None, Reason.ERROR, ErrorCode.FLAG_NOT_FOUND, f"flag {flag_key!r} not found"
    )


#: What each typed resolution accepts; bool is excluded from numbers explicitly.
_ACCEPTS: Final[dict[type, tuple[type, ...]]] = {
    bool: (bool,),
    str: (str,),
    int: (int,),
    float: (int, float),
    dict: (dict, Mapping),
    list: (list,),
    object: (dict, Mapping, list),
}


def evaluate_typed(
    flag: CompiledFlag | None,
    context: Mapping[str, JsonValue],
    now: int,
    expected: type,
    flag_key: str = "",
    default: JsonValue = None,
) -> Resolution:
    """``evaluate`` for a typed call (``bool``, ``str``, ``int``, ``float``, ``object``).

    A resolved variant of another type gives TYPE_MISMATCH (as flagd's typed resolvers);
    integers widen to float. Where the caller's default applies, ``default`` is filled
    in as the value so the result can be returned as is.

    This is the call an SDK makes per flag check, so the common case (a variant of exactly
    the expected class) returns after one class comparison, and ``flag_key`` and ``default``
    are not keyword-only: CPython 3.11 specialises only calls to functions without
    keyword-only parameters (the keyword-only version cost 4-6x ``evaluate`` on a static
    flag, benchmarks/RESULTS.md, issue 11).
    """
    if flag is None:
        return _typed(flag_not_found(flag_key), expected, default)
    resolution = flag.static
    if resolution is None:
        resolution = flag.resolve(context, now)
    if resolution.value.__class__ is expected and resolution.variant is not None:
        return resolution
    return _typed(resolution, expected, default)


def _typed(resolution: Resolution, expected: type, default: JsonValue) -> Resolution:
    """The rest of ``evaluate_typed``: the caller's default, widening, type mismatches."""
    if resolution.variant is None:
        if default is None or resolution.value is not None:
            return resolution
        return Resolution(
            default,
            None,
            resolution.reason,
            resolution.error_code,
            resolution.error_message,
            resolution.metadata,
        )
    value = resolution.value
    accepted = _ACCEPTS.get(expected, (expected,))
    if isinstance(value, accepted) and not (isinstance(value, bool) and expected is not bool):
        if expected is float and value.__class__ is int:
            return Resolution(
                float(value),
                resolution.variant,
                resolution.reason,
                metadata=resolution.metadata,
            )
        return resolution
    return Resolution(
        default,
        None,
        Reason.ERROR,
        ErrorCode.TYPE_MISMATCH,
        f"variant {resolution.variant!r} is {type(value).__name__}, not {expected.__name__}",
        resolution.metadata,
    )
