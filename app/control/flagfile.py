"""flagd files as the GitOps side sees them: read, `$ref`s inlined, compared.

The table stores each flag self-contained, so a file's shared `$evaluators` are inlined into
the flags that reference them on apply; `export` then writes flags that `apply` takes back
as "no change".
"""

from __future__ import annotations

from typing import Any

from app.engine.refs import RefError, inline_refs

__all__ = ["FlagFileError", "flags_of", "plan"]


class FlagFileError(ValueError):
    """The file is not a flagd document we can apply (raised to the CLI, shown to the user)."""


def inline(definition: dict[str, Any], evaluators: dict[str, Any]) -> dict[str, Any]:
    """The flag with every `{"$ref": name}` of its targeting replaced by the named evaluator.

    The engine's resolver and bounds (`app.engine.refs`): a file is refused here exactly when
    the engine could not resolve its references. Only targeting holds references, as in flagd.
    """
    if "targeting" not in definition:
        return definition
    try:
        return {**definition, "targeting": inline_refs(definition["targeting"], evaluators)}
    except RefError as error:
        raise FlagFileError(f"{error.path}: {error.message}") from None


def flags_of(document: Any) -> dict[str, dict[str, Any]]:
    """The flags of a flagd document, each self-contained."""
    if not isinstance(document, dict) or not isinstance(document.get("flags"), dict):
        raise FlagFileError('a flagd file is an object with a "flags" object')
    evaluators = document.get("$evaluators", {})
    if not isinstance(evaluators, dict):
        raise FlagFileError('"$evaluators" must be an object')
    flags = {}
    for key, definition in document["flags"].items():
        if not isinstance(definition, dict):
            raise FlagFileError(f"flag {key!r} is not an object")
        flags[key] = inline(definition, evaluators)
    return flags


def plan(
    desired: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]], prune: bool
) -> tuple[list[str], list[str], list[str]]:
    """(created, updated, deleted) flag keys that make `current` equal to `desired`."""
    created = sorted(k for k in desired if k not in current)
    updated = sorted(k for k in desired if k in current and desired[k] != current[k])
    deleted = sorted(k for k in current if k not in desired) if prune else []
    return created, updated, deleted
