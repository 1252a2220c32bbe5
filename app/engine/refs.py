"""``{"$ref": name}``: a flag set's shared ``$evaluators``, resolved one way for everyone.

flagd substitutes a reference by the evaluator it names, textually, inside targeting. The
compiler (``app.engine.jsonlogic``) resolves each reference as it compiles it; flag files
(``app.control.flagfile``) inline them so each stored flag is self-contained. Both go
through ``referenced``, and ``inline_refs`` stops at the compiler's bounds (``MAX_DEPTH``
levels, ``MAX_NODES`` nodes, expansions included), so a file is refused exactly when its
targeting could not be compiled for being too large. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from app.engine.model import JsonValue

__all__ = ["MAX_DEPTH", "MAX_NODES", "RefError", "inline_refs", "is_ref", "referenced"]

#: Deepest JSON nesting of a targeting rule, ``$ref`` expansions included.
MAX_DEPTH: Final = 64
#: Most JSON nodes in one targeting rule, ``$ref`` expansions included.
MAX_NODES: Final = 10_000


class RefError(Exception):
    """A reference that cannot be resolved: unknown evaluator, a cycle, or too large."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def is_ref(node: object) -> bool:
    """Whether ``node`` is a reference: an object whose only key is ``$ref``."""
    return isinstance(node, Mapping) and len(node) == 1 and "$ref" in node


def referenced(
    name: object, evaluators: Mapping[str, JsonValue], chain: Sequence[str], path: str
) -> tuple[str, JsonValue]:
    """(name, evaluator) that ``{"$ref": name}`` stands for, inside the references ``chain``.

    RefError when no evaluator has that name, or when it is already being expanded (a cycle).
    """
    if not isinstance(name, str) or name not in evaluators:
        raise RefError(path, f"$ref to unknown evaluator {name!r}")
    if name in chain:
        raise RefError(path, f"$ref cycle through evaluator {name!r}")
    return name, evaluators[name]


def inline_refs(
    node: JsonValue, evaluators: Mapping[str, JsonValue], path: str = "$.targeting"
) -> JsonValue:
    """``node`` with every reference replaced by its evaluator (recursively); RefError if not."""
    return _Inliner(evaluators).inline(node, path, 0, ())


class _Inliner:
    """One walk of ``inline_refs``: the evaluators and the nodes built so far."""

    def __init__(self, evaluators: Mapping[str, JsonValue]) -> None:
        self.evaluators = evaluators
        self.nodes = 0

    def inline(self, node: JsonValue, path: str, depth: int, chain: tuple[str, ...]) -> JsonValue:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise RefError(path, f"targeting has more than {MAX_NODES} nodes")
        if depth > MAX_DEPTH:
            raise RefError(path, f"targeting is nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            if is_ref(node):
                name, target = referenced(node["$ref"], self.evaluators, chain, path)
                return self.inline(target, f"$.$evaluators.{name}", depth + 1, (*chain, name))
            return {
                key: self.inline(value, f"{path}.{key}", depth + 1, chain)
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [
                self.inline(item, f"{path}[{index}]", depth + 1, chain)
                for index, item in enumerate(node)
            ]
        return node
