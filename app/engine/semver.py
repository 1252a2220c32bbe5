"""Semantic versions for flagd's ``sem_ver`` operator, parsed into comparable keys.

flagd accepts a leading ``v``/``V`` and pads partial versions (``1`` -> ``1.0.0``,
``1.2`` -> ``1.2.0``) before a strict SemVer 2.0.0 parse; build metadata is ignored
when comparing. A parsed version is a tuple that orders exactly as SemVer precedence,
so the operator is one tuple comparison; constant operands are parsed at compile time.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Final

__all__ = ["COMPARATORS", "OPERATORS", "VersionKey", "compare", "parse_version"]

#: (major, minor, patch, is_release, prerelease identifiers); tuples order as SemVer.
VersionKey = tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]

_IDENTIFIER: Final = r"(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
_SEMVER: Final = re.compile(
    rf"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    rf"(?:-({_IDENTIFIER}(?:\.{_IDENTIFIER})*))?"
    r"(?:\+[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*)?",
    re.ASCII,
)


def parse_version(value: Any) -> VersionKey | None:
    """The comparable key of a version as flagd reads it, or None when it is not one."""
    if isinstance(value, bool) or value is None:
        return None
    text = value if value.__class__ is str else str(value)
    # Contexts repeat a handful of app versions: cache those, but never hold long strings.
    return _parse_cached(text) if len(text) <= _CACHED_LENGTH else _parse_text(text)


_CACHED_LENGTH: Final = 64


def _parse_text(text: str) -> VersionKey | None:
    if text[:1] in ("v", "V"):
        text = text[1:]
    numeric = text.split("-", 1)[0].split("+", 1)[0]
    dots = numeric.count(".")
    if dots < 2:
        text = numeric + ".0" * (2 - dots) + text[len(numeric) :]
    match = _SEMVER.fullmatch(text)
    if match is None:
        return None
    major, minor, patch, prerelease = match.groups()
    if prerelease is None:
        return (int(major), int(minor), int(patch), 1, ())
    identifiers = tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in prerelease.split(".")
    )
    return (int(major), int(minor), int(patch), 0, identifiers)


_parse_cached = lru_cache(maxsize=4096)(_parse_text)


#: Each ``sem_ver`` operator as a function of two parsed versions, the one place the
#: operators are spelled; ``^`` is "same major", ``~`` "same minor".
COMPARATORS: Final[Mapping[str, Callable[[VersionKey, VersionKey], bool]]] = MappingProxyType(
    {
        "=": operator.eq,
        "!=": operator.ne,
        "<": operator.lt,
        "<=": operator.le,
        ">": operator.gt,
        ">=": operator.ge,
        "^": lambda left, right: left[0] == right[0],
        "~": lambda left, right: left[0] == right[0] and left[1] == right[1],
    }
)

#: The operator names flagd knows.
OPERATORS: Final = frozenset(COMPARATORS)


def compare(left: VersionKey, operator: str, right: VersionKey) -> bool | None:
    """Apply a ``sem_ver`` operator chosen at evaluation time; None for one flagd does not know."""
    test = COMPARATORS.get(operator)
    return None if test is None else test(left, right)
