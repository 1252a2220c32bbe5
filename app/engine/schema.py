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

import functools
import reprlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import resources
from typing import Any, Final

import jsonschema_rs
import orjson

from app.engine.jsonlogic import reduction_problems, targeting_problems
from app.engine.problems import Problem, json_path

__all__ = ["MAX_DEPTH", "flag_problems", "flag_set_problems"]

#: Deepest nesting (objects/arrays) we validate. The compiled validator and the
#: engine's own walks stay far from any recursion limit at this depth; anything
#: deeper is reported as a Problem. Real flag definitions stay far below this.
MAX_DEPTH: Final = 32

_SCHEMA: Final[dict[str, Any]] = orjson.loads(
    resources.files("app.engine").joinpath("schemas/flag.json").read_bytes()
)
_SCHEMA_ID: Final[str] = _SCHEMA["$id"]


def _with_python_ends(schema: Any) -> Any:
    """The schema with each pattern's final ``$`` meaning what it means in Python's ``re``.

    The patterns are flagd's, which upstream evaluates with Python ``re``: there ``$`` also
    matches before a final newline (a variant named ``"on\\n"`` is accepted). In the Rust
    regex engine of jsonschema-rs ``$`` is the end of the text only, so it becomes ``\\n?\\z``.
    """
    if isinstance(schema, dict):
        return {
            key: _python_end(value) if key == "pattern" else _with_python_ends(value)
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_with_python_ends(item) for item in schema]
    return schema


def _python_end(pattern: Any) -> Any:
    if isinstance(pattern, str) and pattern.endswith("$") and not pattern.endswith("\\$"):
        return pattern[:-1] + "\\n?\\z"
    return pattern


jsonschema_rs.meta.validate(_SCHEMA)
_REGISTRY: Final = jsonschema_rs.Registry([(_SCHEMA_ID, _with_python_ends(_SCHEMA))])


def _validator_for(definition: str) -> jsonschema_rs.Draft202012Validator:
    """A compiled (Rust) validator for one entry point of the schema: ~20 µs per flag."""
    return jsonschema_rs.Draft202012Validator(
        {"$ref": f"{_SCHEMA_ID}#/$defs/{definition}"}, registry=_REGISTRY
    )


_FLAG_VALIDATOR: Final = _validator_for("flag")
_FLAG_SET_VALIDATOR: Final = _validator_for("flagSet")

_Path = tuple[str | int, ...]

_REPR: Final = reprlib.Repr()
_REPR.maxstring = 40
_REPR.maxother = 40
_REPR.maxlevel = 2


def flag_problems(definition: object, *, compiled_next: bool = False) -> list[Problem]:
    """Every problem with one flag definition (paths like ``$.variants.on``).

    ``compiled_next``: the caller has checked the definition's depth and compiles the
    targeting right after (``compile_flag``), and that compile refuses a rule beyond the
    size bounds with the same problem, so a definition the schema accepts is neither walked
    nor compiled a second time here (that was half of a replica's compile). Anything the
    schema refuses is checked in full.
    """
    if compiled_next:
        valid = _valid_flag(definition)
        if valid is not None:
            return valid
    return _problems(definition, _FLAG_VALIDATOR, _flag_semantics, _flag_costs)


def _valid_flag(definition: object) -> list[Problem] | None:
    """The problems of a definition the schema accepts, without compiling its targeting;
    None when the schema does not accept it. Its depth is checked by the caller."""
    if not isinstance(definition, Mapping):
        return None
    try:
        if not _FLAG_VALIDATOR.is_valid(definition):
            return None
    except (ValueError, TypeError, OverflowError):
        return None
    costly = {
        Problem("$" + at[1:], message)
        for at, message in reduction_problems(definition.get("targeting"))
    }
    found = costly or set(_flag_semantics(definition, ()))  # as `_problems`: costs alone
    return sorted(found, key=lambda p: (p.path, p.message))


def flag_set_problems(document: object) -> list[Problem]:
    """Every problem with a flagd flag-set document (paths like ``$.flags.x.state``)."""
    return _problems(document, _FLAG_SET_VALIDATOR, _flag_set_semantics, _flag_set_costs)


def _problems(
    instance: object,
    validator: jsonschema_rs.Draft202012Validator,
    semantics: Callable[[object, _Path], Iterator[Problem]],
    costs: Callable[[object, _Path], Iterator[Problem]],
) -> list[Problem]:
    """The bounds first, then one compiled ``is_valid``; the error listing only when invalid."""
    too_deep = _too_deep(instance)
    if too_deep is not None:
        return [Problem(too_deep, f"nested deeper than {MAX_DEPTH} levels")]
    # Targeting too costly to run is refused before the schema, with only the bounds broken:
    # the schema's errors for a rule at the bounds would run to thousands of lines.
    costly = sorted(set(costs(instance, ())), key=lambda p: (p.path, p.message))
    if costly:
        return costly
    try:
        valid = validator.is_valid(instance)
        errors = () if valid else validator.iter_errors(instance)
        found = {problem for error in errors for problem in _to_problems(error, instance)}
    except (ValueError, TypeError, OverflowError):  # Python values JSON cannot hold
        found = set(_not_json(instance)) or {Problem("$", "not a JSON document")}
        return sorted(found, key=lambda p: (p.path, p.message))
    found.update(semantics(instance, ()))
    return sorted(found, key=lambda p: (p.path, p.message))


def _too_deep(instance: object) -> str | None:
    """Path of the first container nested deeper than MAX_DEPTH, if any (iterative).

    Depths only on the way (no path tuples: this runs on every definition); the path is
    looked for only once the document is known to be too deep.
    """
    stack: list[tuple[object, int]] = [(instance, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            children: Iterable[object] = value.values()
        elif isinstance(value, list | tuple):
            children = value
        else:
            continue
        if depth >= MAX_DEPTH:
            return _too_deep_path(instance)
        stack.extend((child, depth + 1) for child in children)
    return None


def _too_deep_path(instance: object) -> str:
    """Path of the first container nested deeper than MAX_DEPTH (the slow walk, with paths)."""
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
    return "$"


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


def _to_problems(error: jsonschema_rs.ValidationError, instance: object) -> Iterator[Problem]:
    for culprit, message in _explain(error):
        yield Problem(json_path(_located(instance, culprit)), message)


_Explained = list[tuple[jsonschema_rs.ValidationError, str]]


def _explain(error: jsonschema_rs.ValidationError) -> _Explained:
    """The errors that explain ``error`` best, each with its short message.

    A composite error (anyOf/oneOf) is explained by the branch that got furthest into the
    instance (e.g. the ``sem_ver`` rule whose operator is wrong), because that is almost
    always what the author meant: each of its errors below the composite's own value is
    reported (an ``if`` with two bad arguments has two problems). Of equally deep
    branches, the first. If no branch got deeper, the schema's ``x-fallback`` text says
    what was expected instead. Schemas with ``x-message`` are reported as they are.
    """
    schema = _schema_at(tuple(error.schema_path[:-1]))
    kind = error.kind
    if not isinstance(kind, _COMPOSITE) or "x-message" in schema:
        return [(error, _message(error, schema))]
    depth = len(error.instance_path)
    best: _Explained = []
    for branch in kind.context:
        explained = [found for child in branch for found in _explain(child)]
        deeper = [(e, m) for e, m in explained if len(e.instance_path) > depth]
        if _deepest(deeper) > _deepest(best):
            best = deeper
    if best:
        return best
    fallback = schema.get("x-fallback")
    return [(error, fallback if isinstance(fallback, str) else _message(error, schema))]


def _deepest(explained: _Explained) -> int:
    return max((len(error.instance_path) for error, _ in explained), default=-1)


#: The errors whose branches say more than they do (a oneOf that more than one branch
#: matches is not one: its message says so).
_COMPOSITE: Final = (
    jsonschema_rs.ValidationErrorKind.AnyOf,
    jsonschema_rs.ValidationErrorKind.OneOfNotValid,
)


@functools.cache
def _schema_at(pointer: tuple[str | int, ...]) -> Mapping[str, Any]:
    """The schema object at a path of ``schemas/flag.json`` (the one holding a failed keyword)."""
    node: Any = _SCHEMA
    for part in pointer:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return {}
    return node if isinstance(node, Mapping) else {}


def _located(instance: object, error: jsonschema_rs.ValidationError) -> _Path:
    """The exact path of an error in ``instance``, from the validator's lossy one.

    jsonschema-rs (0.60) reports a key that looks like a number ("0") as an int and drops
    an empty key ("") from the path, so the path is walked through the instance itself:
    at an object a part names a key (its text, or "" first if it does not), at an array an
    index; at the end, an empty key holding the failing value is the culprit. A part that
    cannot be followed ends the path at the last value found.
    """
    path, found = error.instance_path, []
    node: Any = instance
    at = 0
    while at < len(path) or _empty_key_holds(node, error.instance):
        key: str | int | None = None
        part = path[at] if at < len(path) else ""
        if isinstance(node, Mapping):
            key = _key_named(node, part)
            if key is not None and at < len(path):
                at += 1
            elif "" in node:  # a dropped empty key: descend, the part is still to come
                key = ""
        elif isinstance(node, list | tuple) and isinstance(part, int) and 0 <= part < len(node):
            key, at = part, at + 1
        if key is None:
            break
        found.append(key)
        node = node[key]
    return tuple(found)


def _empty_key_holds(node: object, culprit: object) -> bool:
    """Whether the failing value is under the empty key of ``node`` rather than ``node``."""
    return isinstance(node, Mapping) and "" in node and node != culprit and node[""] == culprit


def _key_named(mapping: Mapping[Any, Any], part: str | int) -> str | None:
    """The key of ``mapping`` that a path part stands for ("0" or "00" for the int 0)."""
    if isinstance(part, str):
        return part if part in mapping else None
    if str(part) in mapping:
        return str(part)
    numeric = (k for k in mapping if isinstance(k, str) and k.isascii() and k.isdigit())
    return next((k for k in numeric if int(k) == part), None)


def _message(error: jsonschema_rs.ValidationError, schema: Mapping[str, Any]) -> str:
    """The schema's ``x-message`` if it has one, else a short text for the failed keyword."""
    custom = schema.get("x-message")
    if isinstance(custom, str):
        return custom
    keyword = str(error.schema_path[-1]) if error.schema_path else ""
    expected, got, kind = schema.get(keyword), error.instance, error.kind
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Required):
        return f"{kind.property!r} is a required property"
    if keyword == "enum" and isinstance(expected, list):
        allowed = ", ".join(orjson.dumps(v).decode() for v in expected)
        return f"must be one of {allowed}; got {_REPR.repr(got)}"
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.OneOfMultipleValid):
        if got == {}:
            return "an empty object is not allowed here"
        return "matches more than one allowed form"
    explain = _KEYWORD_MESSAGES.get(keyword)
    return explain(expected, got) if explain is not None else f"failed {keyword} check"


def _not_json(instance: object) -> Iterator[Problem]:
    """Where a Python value holds what JSON cannot: other keys than text, other types.

    Only reached when the validator refuses to read the value (from Python callers, never
    from parsed JSON), so it may be slow; it says where, as every problem does.
    """
    stack: list[tuple[object, _Path]] = [(instance, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, Mapping):
            for key, child in value.items():
                if not isinstance(key, str):
                    yield Problem(json_path(path), f"key {_REPR.repr(key)} is not a string")
                elif not _encodable(key):
                    yield Problem(json_path(path), "a key is not valid Unicode text")
                else:
                    stack.append((child, (*path, key)))
        elif isinstance(value, list | tuple):
            stack.extend((child, (*path, index)) for index, child in enumerate(value))
        elif isinstance(value, str):
            if not _encodable(value):
                yield Problem(json_path(path), "text is not valid Unicode")
        elif value is not None and not isinstance(value, bool | int | float):
            yield Problem(json_path(path), f"not a JSON value: {type(value).__name__}")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


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
