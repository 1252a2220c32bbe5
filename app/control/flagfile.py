"""flagd files as the GitOps side sees them: read, `$ref`s inlined, compared.

The table stores each flag self-contained, so a file's shared `$evaluators` are inlined into
the flags that reference them on apply; `export` then writes flags that `apply` takes back
as "no change".
"""

from __future__ import annotations

from typing import Any

MAX_REF_DEPTH = 32


class FlagFileError(ValueError):
    """The file is not a flagd document we can apply (raised to the CLI, shown to the user)."""


def inline(node: Any, evaluators: dict[str, Any], depth: int = 0) -> Any:
    """`node` with every `{"$ref": name}` replaced by the named shared evaluator."""
    if depth > MAX_REF_DEPTH:
        raise FlagFileError("$ref nesting is deeper than 32 (a cycle?)")
    if isinstance(node, dict):
        if set(node) == {"$ref"}:
            name = node["$ref"]
            if name not in evaluators:
                raise FlagFileError(f"$ref to unknown evaluator {name!r}")
            return inline(evaluators[name], evaluators, depth + 1)
        return {k: inline(v, evaluators, depth) for k, v in node.items()}
    if isinstance(node, list):
        return [inline(v, evaluators, depth) for v in node]
    return node


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
