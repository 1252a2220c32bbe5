"""Values the engine hands out: resolutions, reasons, error codes and compiled flags.

The names and spellings are OpenFeature's (``FlagResolutionDetails``, ``Reason``,
``ErrorCode``) so that the web layer can put them on the wire unchanged. Everything here is
immutable: compiled flags are shared between evaluations and resolutions are pre-built and
shared too, so nobody may mutate them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from app.engine.problems import Problem

__all__ = [
    "EMPTY_METADATA",
    "FRACTIONAL_VERSION_KEY",
    "CompiledFlag",
    "ErrorCode",
    "FractionalVersion",
    "JsonObject",
    "JsonValue",
    "Metadata",
    "MetadataValue",
    "Reason",
    "Resolution",
    "Resolver",
]

#: Any JSON document as ``orjson.loads`` returns it. Public signatures take JSON as this
#: (or ``Mapping[str, JsonValue]``, which also accepts read-only views) instead of ``Any``.
JsonValue = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]
#: A JSON object.
JsonObject = dict[str, JsonValue]

#: Flag metadata values allowed by flagd's schema.
MetadataValue = str | int | float | bool
Metadata = Mapping[str, MetadataValue]

EMPTY_METADATA: Metadata = MappingProxyType({})


class Reason(StrEnum):
    """Why a value was chosen (OpenFeature spec, "Evaluation details" section)."""

    STATIC = "STATIC"
    DEFAULT = "DEFAULT"
    TARGETING_MATCH = "TARGETING_MATCH"
    # flagd reports fractional splits as TARGETING_MATCH; SPLIT is kept for the vocabulary.
    SPLIT = "SPLIT"
    CACHED = "CACHED"
    DISABLED = "DISABLED"
    UNKNOWN = "UNKNOWN"
    STALE = "STALE"
    ERROR = "ERROR"


class ErrorCode(StrEnum):
    """Why resolution failed (OpenFeature spec); the value is the caller's default."""

    PROVIDER_NOT_READY = "PROVIDER_NOT_READY"
    PROVIDER_FATAL = "PROVIDER_FATAL"
    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
    PARSE_ERROR = "PARSE_ERROR"
    TYPE_MISMATCH = "TYPE_MISMATCH"
    TARGETING_KEY_MISSING = "TARGETING_KEY_MISSING"
    INVALID_CONTEXT = "INVALID_CONTEXT"
    GENERAL = "GENERAL"


class FractionalVersion(StrEnum):
    """Generations of flagd's ``fractional`` bucketing; see ``app.engine.bucketing``."""

    V1 = "v1"
    V2 = "v2"
    V3 = "v3"


#: Flag or flag-set metadata key that pins a fractional generation ("v1", "v2" or "v3").
FRACTIONAL_VERSION_KEY = "flagstream.fractional"


@dataclass(frozen=True, slots=True)
class Resolution:
    """The outcome of one evaluation, an error included.

    ``value`` is ``None`` whenever no variant was resolved (errors, DISABLED, DEFAULT without
    a default variant): the caller substitutes its own default, as OpenFeature does.
    """

    value: Any
    variant: str | None
    reason: Reason
    error_code: ErrorCode | None = None
    error_message: str | None = None
    metadata: Metadata = field(default_factory=lambda: EMPTY_METADATA)


#: What a compiled flag runs when it has targeting: (context, unix seconds) -> Resolution.
Resolver = Callable[[Mapping[str, Any], int], Resolution]


@dataclass(frozen=True, slots=True)
class CompiledFlag:
    """One flag version compiled for evaluation; built by ``compile_flag``, never mutated.

    ``static`` is set when the outcome does not depend on the context (disabled, no
    targeting, invalid targeting), so evaluation is an attribute lookup; otherwise
    ``resolve`` runs the targeting closures.
    """

    key: str
    state: str
    default_variant: str | None
    variants: Mapping[str, Any]
    metadata: Metadata
    targeting: Any
    fractional_version: FractionalVersion
    static: Resolution | None
    resolve: Resolver
    warnings: tuple[Problem, ...] = ()
