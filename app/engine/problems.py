"""Validation problems as plain values, and the one spelling of the JSON paths they carry.

Errors are values here: validators return a list of ``Problem`` instead of
raising, so callers (the HTTP API, the Kafka ingest path, the CLI) can report
every problem at once, sort and compare them in tests, and never have to guess
which exception a validator might throw on hostile input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import orjson

__all__ = ["Problem", "json_path"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a document.

    ``path`` is a JSON path rooted at ``$`` (``$.flags.myFlag.variants``,
    ``$.variants.on``, ``$.targeting.if[0]``, ``$.flags["odd key"]``) so the problem can be
    pointed at in the original JSON; ``message`` is a short human-readable explanation.
    """

    path: str
    message: str


#: Keys written with a dot; any other key is written ``["as a JSON string"]``.
_SIMPLE_KEY: Final = re.compile(r"[A-Za-z0-9_$-]+")


def json_path(parts: Iterable[object], root: str = "$") -> str:
    """The JSON path of ``parts`` below ``root``: ``.key``, ``["odd key"]`` or ``[index]``."""
    text = [root]
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            text.append(f"[{part}]")
        elif not isinstance(part, str):  # only from non-JSON input, e.g. {None: ...}
            text.append(f"[{_quoted(repr(part))}]")
        elif _SIMPLE_KEY.fullmatch(part):
            text.append(f".{part}")
        else:
            text.append(f"[{_quoted(part)}]")
    return "".join(text)


def _quoted(text: str) -> str:
    try:
        return orjson.dumps(text).decode()
    except orjson.JSONEncodeError:  # a lone surrogate is not UTF-8: shown as its escape
        return orjson.dumps(text.encode("utf-8", "backslashreplace").decode()).decode()
