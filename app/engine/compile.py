"""Flag definitions (flagd JSON) compiled once per version into ``CompiledFlag``.

A definition is checked with our JSON Schema (``app.engine.schema``) and then compiled:
its targeting becomes closures (``app.engine.jsonlogic``) and every outcome that does not
depend on the context (disabled, static, each variant as a targeting match, the default)
becomes a pre-built ``Resolution``, so evaluation allocates nothing on the common paths.

What is rejected and what degrades, mirroring flagd:

* a definition flagd cannot load (bad state, no variants, a defaultVariant that is not a
  variant, bad metadata, an unknown fractional pin) or targeting beyond our size bounds
  is rejected: ``compile_flag`` returns the problems;
* targeting that breaks the schema but can still run (flagd only warns) compiles, with the
  problems kept in ``CompiledFlag.warnings``;
* targeting that cannot run (unknown operation, ``$ref`` to a missing evaluator) compiles
  to a flag that always resolves with PARSE_ERROR, as flagd does at evaluation time;
* an evaluation that exceeds its work budget (``app.engine.budget``) resolves with
  ERROR / GENERAL and a message starting "evaluation budget exceeded".
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Final

from app.engine.budget import METER, WORK_PER_EVALUATION, BudgetExceeded
from app.engine.jsonlogic import MAX_DEPTH, InvalidRule, RuleTooLarge, Scope, compile_rule
from app.engine.model import (
    EMPTY_METADATA,
    FRACTIONAL_VERSION_KEY,
    CompiledFlag,
    ErrorCode,
    FractionalVersion,
    Metadata,
    Reason,
    Resolution,
    Resolver,
)
from app.engine.problems import Problem
from app.engine.schema import flag_problems, flag_set_problems

_TOLERATED_PREFIXES: Final = ("$.targeting", "$.$evaluators")
_SIMPLE_KEY: Final = re.compile(r"[A-Za-z0-9_$-]+")


def compile_flag(
    key: str,
    definition: Mapping[str, Any],
    *,
    evaluators: Mapping[str, Any] | None = None,
    flag_set_metadata: Mapping[str, Any] | None = None,
) -> CompiledFlag | list[Problem]:
    """Compile one flag; the problems instead when flagd would not load it."""
    if _deeper_than(definition, MAX_DEPTH):
        return [Problem("$", f"definition is nested deeper than {MAX_DEPTH} levels")]
    if _deeper_than(evaluators, MAX_DEPTH + 1):
        return [Problem("$.$evaluators", f"nested deeper than {MAX_DEPTH} levels")]
    found = flag_problems(definition)
    fatal = [problem for problem in found if not problem.path.startswith(_TOLERATED_PREFIXES)]
    fatal.extend(_metadata_problems(flag_set_metadata, "$.<flag set>.metadata"))
    if fatal:
        return fatal
    warnings = tuple(problem for problem in found if problem not in fatal)

    flag_metadata = definition.get("metadata") or {}
    set_metadata = flag_set_metadata or {}
    pinned = flag_metadata.get(FRACTIONAL_VERSION_KEY, set_metadata.get(FRACTIONAL_VERSION_KEY))
    try:
        fractional = FractionalVersion(pinned) if pinned is not None else FractionalVersion.V3
    except ValueError:
        allowed = ", ".join(version.value for version in FractionalVersion)
        return [Problem(f"$.metadata.{FRACTIONAL_VERSION_KEY}", f"must be one of {allowed}")]

    metadata: Metadata = (
        MappingProxyType({**set_metadata, **flag_metadata})
        if set_metadata or flag_metadata
        else EMPTY_METADATA
    )
    variants: Mapping[str, Any] = MappingProxyType(copy.deepcopy(dict(definition["variants"])))
    default_variant = definition.get("defaultVariant") or None
    state = definition["state"]
    targeting = copy.deepcopy(definition.get("targeting"))

    def build(static: Resolution | None, resolve: Resolver) -> CompiledFlag:
        return CompiledFlag(
            key=key,
            state=state,
            default_variant=default_variant,
            variants=variants,
            metadata=metadata,
            targeting=targeting,
            fractional_version=fractional,
            static=static,
            resolve=resolve,
            warnings=warnings,
        )

    if state == "DISABLED":
        disabled = Resolution(None, None, Reason.DISABLED, metadata=metadata)
        return build(disabled, lambda context, now: disabled)
    if not targeting:
        static = _default_outcome(default_variant, variants, Reason.STATIC, metadata)
        return build(static, lambda context, now: static)
    if not isinstance(targeting, Mapping):
        broken = _error(ErrorCode.PARSE_ERROR, "targeting must be a JsonLogic object", metadata)
        return build(broken, lambda context, now: broken)

    scope = Scope(key, fractional, evaluators or {})
    try:
        rule = compile_rule(targeting, scope)
    except RuleTooLarge as too_large:
        return [Problem(too_large.path, too_large.message)]
    except InvalidRule as invalid:
        broken = _error(ErrorCode.PARSE_ERROR, invalid.message, metadata)
        warnings += (Problem(invalid.path, invalid.message),)
        return build(broken, lambda context, now: broken)

    default = _default_outcome(default_variant, variants, Reason.DEFAULT, metadata)
    # Every outcome a rule can name, pre-built; None (no match) maps to the default.
    outcomes: dict[Any, Resolution] = {
        name: Resolution(value, name, Reason.TARGETING_MATCH, metadata=metadata)
        for name, value in variants.items()
        if value is not None
    }
    outcomes[None] = default

    def outcome(chosen: Any) -> Resolution:
        """Slow path: flagd names variants by the text of a boolean or number result."""
        if isinstance(chosen, bool):
            chosen = "true" if chosen else "false"
        elif isinstance(chosen, int | float):
            chosen = str(chosen)
        elif not isinstance(chosen, str):
            message = f"targeting returned {type(chosen).__name__}, not a variant name"
            return _error(ErrorCode.GENERAL, message, metadata)
        found = outcomes.get(chosen)
        if found is not None:
            return found
        shown = chosen if len(chosen) <= 80 else chosen[:77] + "..."
        return _error(ErrorCode.GENERAL, f"targeting chose unknown variant {shown!r}", metadata)

    def failed(error: Exception) -> Resolution:
        if isinstance(error, BudgetExceeded):  # the flag asked too much of this context
            return _error(ErrorCode.GENERAL, error.message, metadata)
        # A bug or a pathological context (deep recursion): degrade, never crash.
        return _error(ErrorCode.GENERAL, f"targeting failed: {type(error).__name__}", metadata)

    # Bound to the closures below: a cell load is cheaper than a global one.
    meter, budget = METER, WORK_PER_EVALUATION

    if scope.needs_enrichment:

        def resolve(context: Mapping[str, Any], now: int) -> Resolution:
            meter.left = budget
            try:
                chosen = rule({**context, "$flagd": {"flagKey": key, "timestamp": now}})
            except Exception as error:
                return failed(error)
            try:
                found = outcomes.get(chosen)
            except TypeError:  # a list or an object: never a variant name
                return outcome(chosen)
            return found if found is not None else outcome(chosen)

    else:

        def resolve(context: Mapping[str, Any], now: int) -> Resolution:
            meter.left = budget
            try:
                chosen = rule(context)
            except Exception as error:
                return failed(error)
            try:
                found = outcomes.get(chosen)
            except TypeError:  # a list or an object: never a variant name
                return outcome(chosen)
            return found if found is not None else outcome(chosen)

    return build(None, resolve)


def compile_flag_set(
    document: Mapping[str, Any],
) -> tuple[dict[str, CompiledFlag], list[Problem]]:
    """Compile a whole flagd file: the flags that load, and the problems of those that do not.

    Problems of the document itself (not an object, bad flag-set metadata) reject every
    flag, as flagd rejects such a file; a bad flag only rejects itself.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("flags"), Mapping):
        return {}, flag_set_problems(document) or [Problem("$.flags", "must be an object")]
    flags: Mapping[str, Any] = document["flags"]
    set_level = flag_set_problems({**document, "flags": {}})
    fatal = [problem for problem in set_level if not problem.path.startswith("$.$evaluators")]
    if fatal:
        return {}, fatal
    tolerated = tuple(problem for problem in set_level if problem not in fatal)
    evaluators = document.get("$evaluators")
    metadata = document.get("metadata")
    compiled: dict[str, CompiledFlag] = {}
    problems: list[Problem] = []
    for key, definition in flags.items():
        result = compile_flag(
            key,
            definition,
            evaluators=evaluators if isinstance(evaluators, Mapping) else None,
            flag_set_metadata=metadata if isinstance(metadata, Mapping) else None,
        )
        if isinstance(result, CompiledFlag):
            if tolerated:
                result = _with_warnings(result, tolerated)
            compiled[key] = result
        else:
            prefix = _flag_path(key)
            problems.extend(
                Problem(prefix + problem.path[1:], problem.message) for problem in result
            )
    return compiled, problems


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether JSON nests deeper than ``limit`` (iterative: safe on any input)."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def _with_warnings(flag: CompiledFlag, extra: tuple[Problem, ...]) -> CompiledFlag:
    return replace(flag, warnings=flag.warnings + extra)


def _flag_path(key: str) -> str:
    if _SIMPLE_KEY.fullmatch(key):
        return f"$.flags.{key}"
    escaped = key.replace("\\", "\\\\").replace("'", "\\'")
    return f"$.flags['{escaped}']"


def _metadata_problems(metadata: Mapping[str, Any] | None, path: str) -> list[Problem]:
    if metadata is None:
        return []
    if not isinstance(metadata, Mapping):
        return [Problem(path, "must be an object")]
    return [
        Problem(f"{path}.{name}", "metadata values must be strings, numbers or booleans")
        for name, value in metadata.items()
        if not isinstance(value, str | int | float)
    ]


def _default_outcome(
    default_variant: str | None,
    variants: Mapping[str, Any],
    reason: Reason,
    metadata: Metadata,
) -> Resolution:
    """What a flag resolves to without a targeting match: its default variant, if any."""
    if default_variant is None:
        # flagd: no default variant means the caller's default, with reason DEFAULT.
        return Resolution(None, None, Reason.DEFAULT, metadata=metadata)
    if default_variant not in variants:
        message = f"default variant {default_variant!r} is not a variant"
        return _error(ErrorCode.GENERAL, message, metadata)
    return Resolution(variants[default_variant], default_variant, reason, metadata=metadata)


def _error(code: ErrorCode, message: str, metadata: Metadata) -> Resolution:
    return Resolution(None, None, Reason.ERROR, code, message, metadata)
