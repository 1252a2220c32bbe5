"""flagd's own JsonLogic operations: ``fractional``, ``sem_ver``, ``starts_with``, ``ends_with``.

Each builder gets the raw arguments (to specialise on constants) and their compiled
rules, and returns a Rule. As in flagd (testbed ``@operator-errors``), an operation
that cannot be applied yields null, never false, so the flag falls back to its
default variant instead of looking up a "false" variant.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from app.engine import bucketing, semver
from app.engine.model import FractionalVersion
from app.engine.rules import Rule, constant, get_var, is_constant, plain_var_key

__all__ = ["BUILDERS", "Builder", "Context", "Split", "fractional_split"]


@dataclass(frozen=True, slots=True)
class Context:
    """What an operation may know about the flag it is compiled for."""

    flag_key: str
    fractional: FractionalVersion


Builder = Callable[[list[Any], list[Rule], Context], Rule]


# --- starts_with / ends_with ------------------------------------------------------------


def _string_test(name: str) -> Builder:
    """``starts_with``/``ends_with``: null unless both sides are strings (flagd)."""
    method: Callable[[str, str], bool] = getattr(str, name)

    def build(args: list[Any], compiled: list[Rule], context: Context) -> Rule:
        if len(compiled) != 2:
            return constant(None)
        left, right = compiled
        affix = args[1]
        if not isinstance(affix, str):
            return constant(None) if is_constant(affix) else _affix_dynamic(method, left, right)
        key = plain_var_key(args[0])
        if key is not None:
            return _affix_of_key(name, key, affix)

        def on_rule(data: Any) -> bool | None:
            value = left(data)
            return method(value, affix) if isinstance(value, str) else None

        return on_rule

    return build


def _affix_dynamic(method: Callable[[str, str], bool], left: Rule, right: Rule) -> Rule:
    """``starts_with``/``ends_with`` whose affix is computed per evaluation."""

    def dynamic(data: Any) -> bool | None:
        value, other = left(data), right(data)
        if isinstance(value, str) and isinstance(other, str):
            return method(value, other)
        return None

    return dynamic


def _affix_of_key(name: str, key: str, affix: str) -> Rule:
    """``starts_with``/``ends_with`` of a plain context key and a constant: the hot shape.

    One closure per method on purpose: ``value.endswith(affix)`` on an exact str is a
    direct method call, cheaper than calling an unbound ``str.endswith`` held in a cell.
    """
    if name == "endswith":

        def key_ends_with(data: Any) -> bool | None:
            value = data.get(key) if data.__class__ is dict else get_var(data, key)
            if value.__class__ is str:
                return value.endswith(affix)
            return value.endswith(affix) if isinstance(value, str) else None

        return key_ends_with

    def key_starts_with(data: Any) -> bool | None:
        value = data.get(key) if data.__class__ is dict else get_var(data, key)
        if value.__class__ is str:
            return value.startswith(affix)
        return value.startswith(affix) if isinstance(value, str) else None

    return key_starts_with


# --- sem_ver ----------------------------------------------------------------------------


def _sem_ver(args: list[Any], compiled: list[Rule], context: Context) -> Rule:
    if len(compiled) != 3:
        return constant(None)
    left, operator_rule, right = compiled
    operator = args[1]
    if is_constant(operator) and (
        not isinstance(operator, str) or operator not in semver.OPERATORS
    ):
        return constant(None)
    if is_constant(args[2]) and isinstance(operator, str):
        pinned = semver.parse_version(args[2])
        if pinned is None:
            return constant(None)
        target: semver.VersionKey = pinned
        test = semver.COMPARATORS[operator]
        key = plain_var_key(args[0])
        if key is not None:

            def key_against_constant(data: Any) -> bool | None:
                value = data.get(key) if data.__class__ is dict else get_var(data, key)
                version = semver.parse_version(value)
                return None if version is None else test(version, target)

            return key_against_constant

        def against_constant(data: Any) -> bool | None:
            version = semver.parse_version(left(data))
            return None if version is None else test(version, target)

        return against_constant

    def dynamic(data: Any) -> bool | None:
        version, other = semver.parse_version(left(data)), semver.parse_version(right(data))
        op = operator_rule(data)
        if version is None or other is None or not isinstance(op, str):
            return None
        return semver.compare(version, op, other)

    return dynamic


# --- fractional -------------------------------------------------------------------------

#: A parsed split: the variants (any JSON value) and their non-negative integer weights.
Split = tuple[tuple[Any, ...], tuple[int, ...]]


def _parse_split(buckets: list[Any], version: FractionalVersion) -> Split | None:
    """Variants and weights of ``[[variant, weight?], ...]``; None when flagd would refuse.

    v3 (flagd-core) wants integer weights; v1/v2 (Go, float64 numbers) truncate. A missing
    weight is 1 and a negative one counts as 0, as in every generation.
    """
    variants = []
    weights = []
    for bucket in buckets:
        if not isinstance(bucket, list) or not 1 <= len(bucket) <= 2:
            return None
        weight = 1
        if len(bucket) == 2:
            raw = bucket[1]
            if isinstance(raw, bool):
                return None
            if isinstance(raw, int):
                weight = raw
            elif isinstance(raw, float) and version is not FractionalVersion.V3:
                if raw != raw or raw in (float("inf"), float("-inf")):
                    return None
                weight = int(raw)
            else:
                return None
        variants.append(bucket[0])
        weights.append(max(0, weight))
    total = sum(weights)
    if total <= 0 or total > bucketing.MAX_TOTAL_WEIGHT:
        return None
    return tuple(variants), tuple(weights)


def fractional_split(targeting: Any, version: FractionalVersion) -> Split | None:
    """The first constant ``fractional`` split in `targeting` (depth first, in rule order),
    as flagd would parse it: what an experiment's sample-ratio check compares subjects with.
    None when the targeting has none (or only one whose buckets are computed at run time)."""
    stack = [targeting]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if len(node) == 1 and isinstance(node.get("fractional"), list):
                args = node["fractional"]
                buckets = args if args and isinstance(args[0], list) else args[1:]
                if all(is_constant(bucket) for bucket in buckets):
                    split = _parse_split(list(buckets), version)
                    if split is not None:
                        return split
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return None


def _choose(split: Split, bucket_value: Any, version: FractionalVersion) -> Any:
    """The variant for a bucketing value under a split (None when it cannot be bucketed)."""
    variants, weights = split
    if version is FractionalVersion.V3:
        hashed = bucketing.hash_v3(bucket_value)
        bounds = bucketing.thresholds(weights)
    elif not isinstance(bucket_value, str):
        return None
    elif version is FractionalVersion.V2:
        hashed = bucketing.hash_v2(bucket_value)
        bounds = bucketing.thresholds(weights)
    else:
        signed = bucketing.hash_v1(bucket_value)
        if signed is None:
            return None
        index = bucketing.bucket_v1(signed, weights, sum(weights))
        return None if index is None else variants[index]
    if hashed is None or bounds is None:
        return None
    index = bucketing.pick(bounds, hashed)
    return None if index is None else variants[index]


def _fractional(args: list[Any], compiled: list[Rule], context: Context) -> Rule:
    """flagd's ``fractional``: ``[bucketBy?, [variant, weight?], ...]``.

    Without a bucketing expression (the first argument is itself a bucket) flagd buckets
    by the targeting key: v3 by ``[flagKey, targetingKey]`` and only for a non-empty
    string key; v1/v2 by the string ``flagKey + targetingKey``. In v1/v2 a first argument
    that is null is skipped and a non-string one is taken as a bucket (Go's parser).
    """
    if not compiled:
        return constant(None)
    if isinstance(args[0], list):
        return _shorthand(args, compiled, context)
    if not all(is_constant(node) for node in args[1:]):
        return _fractional_dynamic(compiled[0], compiled[1:], context)
    split = _parse_split(list(args[1:]), context.fractional)
    if split is None:
        if context.fractional is FractionalVersion.V3:
            return constant(None)
        return _fractional_dynamic(compiled[0], compiled[1:], context)
    return _fractional_static(args[0], compiled[0], compiled[1:], split, context)


def _fractional_static(
    first_node: Any, bucket_by: Rule, rest: list[Rule], split: Split, context: Context
) -> Rule:
    """A split of constant buckets: a string bucketing value is one hash and one bisect."""
    variants, weights = split
    bounds = bucketing.thresholds(weights) or ()
    hash_text = _TEXT_HASHERS.get(context.fractional)
    general = _fractional_general(split, rest, context)
    if hash_text is None:  # v1: float bucketing, no fast path
        return lambda data: general(data, bucket_by(data))

    # The last bound is 2**32, above any hash, so bisect always lands on a bucket.
    key = plain_var_key(first_node)
    if key is not None:

        def fractional_on_key(data: Any) -> Any:
            value = data.get(key) if data.__class__ is dict else get_var(data, key)
            if value.__class__ is str:
                hashed = hash_text(value)
                return None if hashed is None else variants[bisect_right(bounds, hashed)]
            return general(data, value)

        return fractional_on_key

    def fractional_static(data: Any) -> Any:
        value = bucket_by(data)
        if value.__class__ is str:
            hashed = hash_text(value)
            return None if hashed is None else variants[bisect_right(bounds, hashed)]
        return general(data, value)

    return fractional_static


def _fractional_general(
    split: Split, rest: list[Rule], context: Context
) -> Callable[[Any, Any], Any]:
    """A constant split applied to any bucketing value (the static closures' slow path)."""
    version = context.fractional

    def fractional_general(data: Any, value: Any) -> Any:
        if version is FractionalVersion.V3:
            if isinstance(value, list):
                return _by_pair(data, [value, *[rule(data) for rule in rest]], context)
            return None if value is None else _choose(split, value, version)
        if isinstance(value, str):
            return _choose(split, value, version)
        buckets = [rule(data) for rule in rest]
        return _by_text(data, buckets if value is None else [value, *buckets], context)

    return fractional_general


def _fractional_dynamic(bucket_by: Rule, rest: list[Rule], context: Context) -> Rule:
    """Buckets computed per evaluation (or unusable in v1/v2 until then): parsed each time."""
    version = context.fractional

    def fractional_dynamic(data: Any) -> Any:
        value = bucket_by(data)
        buckets = [rule(data) for rule in rest]
        if version is FractionalVersion.V3:
            if isinstance(value, list):
                return _by_pair(data, [value, *buckets], context)
            if value is None:
                return None
            split = _parse_split(buckets, version)
            return None if split is None else _choose(split, value, version)
        if isinstance(value, str):
            split = _parse_split(buckets, version)
            return None if split is None else _choose(split, value, version)
        return _by_text(data, buckets if value is None else [value, *buckets], context)

    return fractional_dynamic


def _by_text(data: Any, buckets: list[Any], context: Context) -> Any:
    """v1/v2: no string to bucket by, so Go falls back to flagKey + targetingKey."""
    key = data.get("targetingKey") if isinstance(data, Mapping) else None
    if not isinstance(key, str):
        return None
    split = _parse_split(buckets, context.fractional)
    return None if split is None else _choose(split, context.flag_key + key, context.fractional)


def _by_pair(data: Any, buckets: list[Any], context: Context) -> Any:
    """v3 whose first argument turned out to be a bucket: by [flagKey, targetingKey]."""
    key = data.get("targetingKey") if isinstance(data, Mapping) else None
    if not isinstance(key, str) or not key:
        return None
    split = _parse_split(buckets, context.fractional)
    return None if split is None else _choose(split, [context.flag_key, key], context.fractional)


def _shorthand(args: list[Any], compiled: list[Rule], context: Context) -> Rule:
    """``fractional`` whose first argument is a bucket: bucket by the targeting key."""
    version = context.fractional
    flag_key = context.flag_key
    static_split = _parse_split(list(args), version) if is_constant(args) else None
    if is_constant(args) and static_split is None:
        return constant(None)
    prefix = bucketing.text_pair_prefix(flag_key)
    if version is FractionalVersion.V3 and static_split is not None and prefix is not None:
        variants, weights = static_split
        bounds = bucketing.thresholds(weights)
        if bounds is None:
            return constant(None)

        def static_v3(data: Any) -> Any:
            """The common case, hashed without building the pair: [flag key, targeting key].

            A dict (every context of ours) is taken before the ABC check, which costs
            ~0.4 µs per evaluation."""
            if data.__class__ is dict or isinstance(data, Mapping):
                key = data.get("targetingKey")
            else:
                key = None
            if not isinstance(key, str) or not key:
                return None
            hashed = bucketing.hash_after(prefix, key)
            index = None if hashed is None else bucketing.pick(bounds, hashed)
            return None if index is None else variants[index]

        return static_v3

    def shorthand(data: Any) -> Any:
        key = data.get("targetingKey") if isinstance(data, Mapping) else None
        if not isinstance(key, str) or (version is FractionalVersion.V3 and not key):
            return None
        split = static_split
        if split is None:
            split = _parse_split([rule(data) for rule in compiled], version)
            if split is None:
                return None
        if version is FractionalVersion.V3:
            return _choose(split, [flag_key, key], version)
        return _choose(split, flag_key + key, version)

    return shorthand


_TEXT_HASHERS: Final[dict[FractionalVersion, Callable[[str], int | None]]] = {
    FractionalVersion.V3: bucketing.hash_v3,
    FractionalVersion.V2: bucketing.hash_v2,
}


BUILDERS: Final[dict[str, Builder]] = {
    "fractional": _fractional,
    "sem_ver": _sem_ver,
    "starts_with": _string_test("startswith"),
    "ends_with": _string_test("endswith"),
}
