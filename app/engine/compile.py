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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Final, cast

from app.engine.budget import METER, WORK_PER_EVALUATION, BudgetExceededError
from app.engine.jsonlogic import MAX_DEPTH, InvalidRuleError, RuleTooLargeError, Scope, compile_rule
from app.engine.model import (
    EMPTY_METADATA,
    FRACTIONAL_VERSION_KEY,
    CompiledFlag,
    ErrorCode,
    FractionalVersion,
    JsonValue,
    Metadata,
    Reason,
    Resolution,
    Resolver,
)
from app.engine.problems import Problem, json_path
from app.engine.rules import Rule
from app.engine.schema import flag_problems, flag_set_problems

__all__ = ["compile_flag", "compile_flag_set"]

_TOLERATED_PREFIXES: Final = ("$.targeting", "$.$evaluators")


def compile_flag(
    key: str,
    definition: Mapping[str, JsonValue],
    *,
    evaluators: Mapping[str, JsonValue] | None = None,
    flag_set_metadata: Mapping[str, JsonValue] | None = None,
) -> CompiledFlag | list[Problem]:
    """Compile one flag; the problems instead when flagd would not load it.

    Three steps, all off the hot path: check the definition (``_loadable``), gather what
    does not depend on targeting (``_Parts``), then turn targeting into a resolver.
    """
    checked = _loadable(definition, evaluators, flag_set_metadata)
    if isinstance(checked, list):
        return checked
    parts = _parts(key, definition, flag_set_metadata, checked)
    if isinstance(parts, Problem):
        return [parts]
    return _compiled(parts, evaluators or {})


def _loadable(
    definition: Mapping[str, JsonValue],
    evaluators: Mapping[str, JsonValue] | None,
    flag_set_metadata: Mapping[str, JsonValue] | None,
) -> tuple[Problem, ...] | list[Problem]:
    """The problems that reject the flag (a list), else the tolerated ones (a tuple)."""
    if _deeper_than(definition, MAX_DEPTH):
        return [Problem("$", f"definition is nested deeper than {MAX_DEPTH} levels")]
    if _deeper_than(evaluators, MAX_DEPTH + 1):
        return [Problem("$.$evaluators", f"nested deeper than {MAX_DEPTH} levels")]
    found = flag_problems(definition, compiled_next=True)  # _compiled checks the bounds
    fatal = [problem for problem in found if not problem.path.startswith(_TOLERATED_PREFIXES)]
    fatal.extend(_metadata_problems(flag_set_metadata, "$.<flag set>.metadata"))
    if fatal:
        return fatal
    return tuple(problem for problem in found if problem not in fatal)


@dataclass(frozen=True, slots=True)
class _Parts:
    """What a compiled flag holds whatever its targeting does (a checked definition)."""

    key: str
    state: str
    default_variant: str | None
    variants: Mapping[str, Any]
    metadata: Metadata
    targeting: Any
    fractional: FractionalVersion
    warnings: tuple[Problem, ...]

    def flag(self, static: Resolution | None, resolve: Resolver) -> CompiledFlag:
        return CompiledFlag(
            key=self.key,
            state=self.state,
            default_variant=self.default_variant,
            variants=self.variants,
            metadata=self.metadata,
            targeting=self.targeting,
            fractional_version=self.fractional,
            static=static,
            resolve=resolve,
            warnings=self.warnings,
        )

    def fixed(self, outcome: Resolution) -> CompiledFlag:
        """A flag whose every evaluation is ``outcome``."""
        return self.flag(outcome, lambda context, now: outcome)

    def error(self, code: ErrorCode, message: str) -> Resolution:
        return _error(code, message, self.metadata)


def _parts(
    key: str,
    definition: Mapping[str, JsonValue],
    flag_set_metadata: Mapping[str, JsonValue] | None,
    warnings: tuple[Problem, ...],
) -> _Parts | Problem:
    """The parts of a definition that passed ``_loadable``; a Problem for a bad pin."""
    # The schema has checked these shapes; the casts only tell mypy so.
    flag_metadata = cast(Mapping[str, JsonValue], definition.get("metadata") or {})
    set_metadata = flag_set_metadata or {}
    pinned = flag_metadata.get(FRACTIONAL_VERSION_KEY, set_metadata.get(FRACTIONAL_VERSION_KEY))
    try:  # a pin that is not one of the version strings (a number too) raises ValueError
        fractional = (
            FractionalVersion(cast(str, pinned)) if pinned is not None else FractionalVersion.V3
        )
    except ValueError:
        allowed = ", ".join(version.value for version in FractionalVersion)
        return Problem(f"$.metadata.{FRACTIONAL_VERSION_KEY}", f"must be one of {allowed}")
    metadata: Metadata = (
        MappingProxyType(cast(Metadata, {**set_metadata, **flag_metadata}))
        if set_metadata or flag_metadata
        else EMPTY_METADATA
    )
    variants = cast(Mapping[str, JsonValue], definition["variants"])
    return _Parts(
        key=key,
        state=cast(str, definition["state"]),
        default_variant=cast(str | None, definition.get("defaultVariant") or None),
        variants=MappingProxyType(_json_copy(dict(variants))),
        metadata=metadata,
        targeting=_json_copy(definition.get("targeting")),
        fractional=fractional,
        warnings=warnings,
    )


def _compiled(parts: _Parts, evaluators: Mapping[str, JsonValue]) -> CompiledFlag | list[Problem]:
    """The flag with its resolver: a fixed outcome where targeting cannot matter."""
    if parts.state == "DISABLED":
        return parts.fixed(Resolution(None, None, Reason.DISABLED, metadata=parts.metadata))
    if not parts.targeting:
        return parts.fixed(_default_outcome(parts, Reason.STATIC))
    if not isinstance(parts.targeting, Mapping):
        return parts.fixed(
            parts.error(ErrorCode.PARSE_ERROR, "targeting must be a JsonLogic object")
        )
    scope = Scope(parts.key, parts.fractional, evaluators)
    try:
        rule = compile_rule(parts.targeting, scope)
    except RuleTooLargeError as too_large:
        return [Problem(too_large.path, too_large.message)]
    except InvalidRuleError as invalid:
        broken = replace(parts, warnings=(*parts.warnings, Problem(invalid.path, invalid.message)))
        return broken.fixed(parts.error(ErrorCode.PARSE_ERROR, invalid.message))
    return parts.flag(None, _resolver(parts, rule, enrich=scope.needs_enrichment))


def _resolver(parts: _Parts, rule: Rule, *, enrich: bool) -> Resolver:
    """The hot path: run the rule, map its result to a pre-built outcome.

    Two copies of the closure on purpose: the one without ``$flagd`` enrichment saves
    building a dict per evaluation, and a branch inside would cost every evaluation.
    """
    outcomes = _targeting_outcomes(parts)
    outcome, failed = _slow_outcome(parts, outcomes), _failure(parts)
    # Bound to the closures below: a cell load is cheaper than a global one.
    key, meter, budget = parts.key, METER, WORK_PER_EVALUATION

    if enrich:

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

    return resolve


def _targeting_outcomes(parts: _Parts) -> dict[Any, Resolution]:
    """Every outcome a rule can name, pre-built; None (no match) maps to the default."""
    outcomes: dict[Any, Resolution] = {
        name: Resolution(value, name, Reason.TARGETING_MATCH, metadata=parts.metadata)
        for name, value in parts.variants.items()
        if value is not None
    }
    outcomes[None] = _default_outcome(parts, Reason.DEFAULT)
    return outcomes


def _slow_outcome(parts: _Parts, outcomes: Mapping[Any, Resolution]) -> Callable[[Any], Resolution]:
    """Slow path: flagd names variants by the text of a boolean or number result."""

    def outcome(chosen: Any) -> Resolution:
        if isinstance(chosen, bool):
            chosen = "true" if chosen else "false"
        elif isinstance(chosen, int | float):
            chosen = str(chosen)
        elif not isinstance(chosen, str):
            message = f"targeting returned {type(chosen).__name__}, not a variant name"
            return parts.error(ErrorCode.GENERAL, message)
        found = outcomes.get(chosen)
        if found is not None:
            return found
        shown = chosen if len(chosen) <= 80 else chosen[:77] + "..."
        return parts.error(ErrorCode.GENERAL, f"targeting chose unknown variant {shown!r}")

    return outcome


def _failure(parts: _Parts) -> Callable[[Exception], Resolution]:
    """What an evaluation that raised resolves to: ERROR / GENERAL, never a crash."""

    def failed(error: Exception) -> Resolution:
        if isinstance(error, BudgetExceededError):  # the flag asked too much of this context
            return parts.error(ErrorCode.GENERAL, error.message)
        # A bug or a pathological context (deep recursion): degrade, never crash.
        return parts.error(ErrorCode.GENERAL, f"targeting failed: {type(error).__name__}")

    return failed


def compile_flag_set(
    document: Mapping[str, JsonValue],
) -> tuple[dict[str, CompiledFlag], list[Problem]]:
    """Compile a whole flagd file: the flags that load, and the problems of those that do not.

    Problems of the document itself (not an object, bad flag-set metadata) reject every
    flag, as flagd rejects such a file; a bad flag only rejects itself.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("flags"), Mapping):
        return {}, flag_set_problems(document) or [Problem("$.flags", "must be an object")]
    # Checked above: an object; each flag's shape is checked by compile_flag.
    flags = cast(Mapping[str, Mapping[str, JsonValue]], document["flags"])
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


_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether JSON nests deeper than ``limit`` (iterative: safe on any input)."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        kind = item.__class__
        if kind is dict:  # JSON's own types first: an ABC check costs ~1 µs a node
            children: Any = item.values()
        elif kind is list:
            children = item
        elif kind in _SCALARS:
            continue
        elif isinstance(item, Mapping):
            children = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def _json_copy(value: Any) -> Any:
    """A deep copy of checked JSON (depth bounded above): the flag owns what it holds.

    ~5x faster than ``copy.deepcopy``, which keeps a memo for cycles JSON cannot have.
    """
    if isinstance(value, dict):
        return {key: _json_copy(child) for key, child in value.items()}
    if isinstance(value, list):
        return [_json_copy(child) for child in value]
    if isinstance(value, tuple):
        return tuple(_json_copy(child) for child in value)
    return value


def _with_warnings(flag: CompiledFlag, extra: tuple[Problem, ...]) -> CompiledFlag:
    return replace(flag, warnings=flag.warnings + extra)


def _flag_path(key: str) -> str:
    return json_path(("flags", key))


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


def _default_outcome(parts: _Parts, reason: Reason) -> Resolution:
    """What a flag resolves to without a targeting match: its default variant, if any."""
    if parts.default_variant is None:
        # flagd: no default variant means the caller's default, with reason DEFAULT.
        return Resolution(None, None, Reason.DEFAULT, metadata=parts.metadata)
    value = parts.variants[parts.default_variant]  # the schema checked it names a variant
    return Resolution(value, parts.default_variant, reason, metadata=parts.metadata)


def _error(code: ErrorCode, message: str, metadata: Metadata) -> Resolution:
    return Resolution(None, None, Reason.ERROR, code, message, metadata)
