"""Pure validation of flagd flag definitions against our packaged JSON Schema.

Why a module of its own: flag definitions arrive from untrusted places (HTTP,
Kafka, files), so validation must never raise and must report *every* problem
with a JSON path, not just the first. The schema (``schemas/flag.json``) is ours
but is written to accept exactly what flagd's published schema accepts; the few
rules a schema cannot express (``defaultVariant`` must name a variant) are
checked here in code.

The module is pure: the schema is read once at import, validators are compiled
once, and calls do no I/O.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Iterator, Mapping
from importlib import resources
from typing import Any, Final

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from app.engine.jsonlogic import targeting_problems
from app.engine.problems import Problem, json_path

__all__ = ["MAX_DEPTH", "flag_problems", "flag_set_problems"]

#: Deepest nesting (objects/arrays) we validate. jsonschema recurses in Python,
#: about 17 frames per level for nested rules like {"!": {"!": ...}}, so 32
#: levels stay well inside the default recursion limit of 1000 even when called
#: from deep stacks; anything deeper is reported as a Problem. Real flag
#: definitions stay far below this.
MAX_DEPTH: Final = 32

_SCHEMA: Final[dict[str, Any]] = orjson.loads(
    resources.files("app.engine").joinpath("schemas/flag.json").read_bytes()
)
_SCHEMA_ID: Final[str] = _SCHEMA["$id"]
_REGISTRY: Final = Registry().with_resource(
    _SCHEMA_ID, Resource.from_contents(_SCHEMA, default_specification=DRAFT202012)
)
Draft202012Validator.check_schema(_SCHEMA)


def _validator_for(definition: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"{_SCHEMA_ID}#/$defs/{definition}"}, registry=_REGISTRY)


_FLAG_VALIDATOR: Final = _validator_for("flag")
_FLAG_SET_VALIDATOR: Final = _validator_for("flagSet")

_Path = tuple[str | int, ...]

_REPR: Final = reprlib.Repr()
_REPR.maxstring = 40
_REPR.maxother = 40
_REPR.maxlevel = 2


def flag_problems(definition: object) -> list[Problem]:
    """Every problem with one flag definition (paths like ``$.variants.on``)."""
    return _problems(definition, _FLAG_VALIDATOR, _flag_semantics, _flag_costs)


def flag_set_problems(document: object) -> list[Problem]:
    """Every problem with a flagd flag-set document (paths like ``$.flags.x.state``)."""
    return _problems(document, _FLAG_SET_VALIDATOR, _flag_set_semantics, _flag_set_costs)


def _problems(
    instance: object,
    validator: Draft202012Validator,
    semantics: Callable[[object, _Path], Iterator[Problem]],
    costs: Callable[[object, _Path], Iterator[Problem]],
) -> list[Problem]:
    too_deep = _too_deep(instance)
    if too_deep is not None:
        return [Problem(too_deep, f"nested deeper than {MAX_DEPTH} levels")]
    # Targeting too costly to run is refused before JSON Schema, which spends ~1 ms per
    # targeting node (its targeting schema is a deep anyOf): seconds for a rule at the bounds.
    costly = sorted(set(costs(instance, ())), key=lambda p: (p.path, p.message))
    if costly:
        return costly
    try:
        found = {_to_problem(error) for error in validator.iter_errors(instance)}
        found.update(semantics(instance, ()))
    except RecursionError:  # last resort; the depth guard should prevent this
        return [Problem("$", "document is too deeply nested to validate")]
    return sorted(found, key=lambda p: (p.path, p.message))


def _too_deep(instance: object) -> str | None:
    """Path of the first container nested deeper than MAX_DEPTH, if any (iterative)."""
    stack: list[tuple[object, _Path]] = [(instance, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, Mapping):
            children: Iterator[tuple[str | int, object]] = iter(value.items())
        elif isinstance(value, list | tuple):
            children = enumerate(value)
        else:
            continue
        if len(path) >= MAX_DEPTH:
            return json_path(path)
        stack.extend((child, (*path, key)) for key, child in children)
    return None


def _flag_semantics(flag: object, path: _Path) -> Iterator[Problem]:
    """A rule JSON Schema cannot express: ``defaultVariant`` must name a variant."""
    if not isinstance(flag, Mapping):
        return
    default, variants = flag.get("defaultVariant"), flag.get("variants")
    if isinstance(default, str) and isinstance(variants, Mapping) and default not in variants:
        yield Problem(
            json_path((*path, "defaultVariant")),
            f"defaultVariant {_REPR.repr(default)} is not a key of variants",
        )


def _flag_costs(
    flag: object, path: _Path, evaluators: Mapping[str, Any] | None = None
) -> Iterator[Problem]:
    """Targeting beyond the engine's cost bounds (``targeting_problems``)."""
    if not isinstance(flag, Mapping):
        return
    prefix = json_path(path)
    for at, message in targeting_problems(flag.get("targeting"), evaluators):
        yield Problem(prefix + at[1:], message)


def _flag_set_semantics(document: object, path: _Path) -> Iterator[Problem]:
    for key, flag, _ in _flags_of(document):
        yield from _flag_semantics(flag, (*path, "flags", key))


def _flag_set_costs(document: object, path: _Path) -> Iterator[Problem]:
    for key, flag, evaluators in _flags_of(document):
        yield from _flag_costs(flag, (*path, "flags", key), evaluators)


def _flags_of(document: object) -> Iterator[tuple[str, object, Mapping[str, Any] | None]]:
    """(key, flag, shared evaluators) of every flag of a flag-set document."""
    flags = document.get("flags") if isinstance(document, Mapping) else None
    evaluators = document.get("$evaluators") if isinstance(document, Mapping) else None
    if isinstance(flags, Mapping):
        for key, flag in flags.items():
            yield key, flag, evaluators if isinstance(evaluators, Mapping) else None


def _to_problem(error: ValidationError) -> Problem:
    path, message = _explain(error)
    return Problem(json_path(path), message)


def _explain(error: ValidationError) -> tuple[_Path, str]:
    """Short (path, message) for an error, diving into anyOf/oneOf branches.

    A composite error is explained by the branch that got furthest into the
    instance (e.g. the ``sem_ver`` rule whose operator is wrong), because that
    is almost always what the author meant. If no branch got deeper, the
    schema's ``x-fallback`` text says what was expected instead. Schemas with
    ``x-message`` are reported as they are, without diving in.
    """
    path = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if not error.context or "x-message" in schema:
        return path, _message(error)
    deepest = max((_explain(child) for child in error.context), key=lambda pm: len(pm[0]))
    if len(deepest[0]) > len(path):
        return deepest
    fallback = schema.get("x-fallback")
    return path, fallback if isinstance(fallback, str) else _message(error)


def _message(error: ValidationError) -> str:
    """The schema's ``x-message`` if it has one, else a short text for the failed keyword."""
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    custom = schema.get("x-message")
    if isinstance(custom, str):
        return custom
    keyword, expected, got = error.validator, error.validator_value, error.instance
    if keyword == "required":
        return str(error.message)
    if keyword == "enum" and isinstance(expected, list):
        allowed = ", ".join(orjson.dumps(v).decode() for v in expected)
        return f"must be one of {allowed}; got {_REPR.repr(got)}"
    if keyword == "oneOf" and not error.context:
        if got == {}:
            return "an empty object is not allowed here"
        return "matches more than one allowed form"
    explain = _KEYWORD_MESSAGES.get(str(keyword))
    return explain(expected, got) if explain is not None else f"failed {keyword} check"


#: Messages for the other keywords, from (the keyword's value, the failing instance).
_KEYWORD_MESSAGES: Final[dict[str, Callable[[Any, Any], str]]] = {
    "type": lambda expected, got: f"must be of type {_REPR.repr(expected)}; got {_json_type(got)}",
    "propertyNames": lambda _, got: f"invalid property name {_REPR.repr(got)}",
    "additionalProperties": lambda _, __: "unexpected property",
    "minItems": lambda expected, _: f"must have at least {expected} items",
    "maxItems": lambda expected, _: f"must have at most {expected} items",
    "minProperties": lambda expected, _: f"must have at least {expected} entries",
    "minimum": lambda expected, _: f"must be >= {expected}",
    "pattern": lambda _, got: f"{_REPR.repr(got)} does not match the expected format",
    "anyOf": lambda _, __: "does not match any allowed form",
    "oneOf": lambda _, __: "does not match any allowed form",
}


def _json_type(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case str():
            return "string"
        case list() | tuple():
            return "array"
        case Mapping():
            return "object"
    return type(value).__name__
