"""Random but realistic flagd flags and evaluation contexts, for the differential test.

Seeded ``random.Random`` rather than hypothesis: the point is breadth (thousands of
flags mixing every operation) and a stable corpus, not shrinking. Rules are built from
the same vocabulary real flags use: ``var`` on context attributes, comparisons,
``in``, string and semver operations, ``fractional`` in all its forms, nested ``if``.
"""

from __future__ import annotations

import random
import string
from typing import Any

NAMES = ["alice", "bob", "carol", "dave", "eve", "jack", "queen", "3", "", "Zoë", "名前"]
DOMAINS = ["example.com", "corp.example", "macrosoft.com", "orange.com", "mail.test"]
TIERS = ["free", "pro", "premium", "enterprise", ""]
COUNTRIES = ["de", "us", "fr", "jp", "br"]
VERSIONS = ["1.0.0", "2.1.3", "2.0.0-alpha", "2.0.0-rc.1", "v1.2.3", "1.2", "3", "1.0.0+build"]
VERSIONS += ["not-a-version", "1.2.3.4", "10.20.30", "0.0.1-alpha.beta"]
KEYS = ["email", "age", "tier", "country", "version", "score", "beta", "tags", "user", "id"]
VARIANT_NAMES = ["on", "off", "red", "blue", "green", "control", "treatment", "true", "false"]


def context(rng: random.Random) -> tuple[str | None, dict[str, Any]]:
    """A targeting key (or None) and attributes, sometimes odd, mostly plausible."""
    attributes: dict[str, Any] = {}
    for key in rng.sample(KEYS, rng.randint(0, len(KEYS))):
        attributes[key] = attribute(rng, key)
    roll = rng.random()
    if roll < 0.75:
        targeting_key: str | None = f"{rng.choice(NAMES)}-{rng.randint(0, 10_000)}"
    elif roll < 0.85:
        targeting_key = ""
    else:
        targeting_key = None
    return targeting_key, attributes


def attribute(rng: random.Random, key: str) -> Any:
    """A value for a context key, of the type real callers send with a few surprises."""
    if rng.random() < 0.08:
        return rng.choice([None, True, 0, "", [], {}, 1.5, "42", ["a", 1]])
    if key == "email":
        return f"{rng.choice(NAMES)}@{rng.choice(DOMAINS)}"
    if key == "age":
        return rng.choice([rng.randint(0, 99), float(rng.randint(0, 99)), str(rng.randint(0, 99))])
    if key == "tier":
        return rng.choice(TIERS)
    if key == "country":
        return rng.choice(COUNTRIES)
    if key == "version":
        return rng.choice([*VERSIONS, 1, 2.5])
    if key == "score":
        return rng.choice([rng.random() * 100, rng.randint(-5, 5), -0.0])
    if key == "beta":
        return rng.choice([True, False])
    if key == "tags":
        return rng.sample(["a", "b", "c", "vip", "staff"], rng.randint(0, 4))
    if key == "user":
        return {"name": rng.choice(NAMES), "id": rng.randint(0, 100), "tier": rng.choice(TIERS)}
    return "".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(0, 8)))


def flag(rng: random.Random) -> dict[str, Any]:
    """A flag definition that our schema accepts (targeting may still misbehave)."""
    kind = rng.choice(["bool", "str", "int", "float", "object"])
    names = rng.sample(VARIANT_NAMES, rng.randint(2, 4))
    variants = {name: _variant_value(rng, kind, i) for i, name in enumerate(names)}
    definition: dict[str, Any] = {
        "state": "ENABLED" if rng.random() < 0.92 else "DISABLED",
        "variants": variants,
    }
    roll = rng.random()
    if roll < 0.8:
        definition["defaultVariant"] = rng.choice(names)
    elif roll < 0.9:
        definition["defaultVariant"] = None
    if rng.random() < 0.85:
        definition["targeting"] = targeting(rng, names)
    elif rng.random() < 0.5:
        definition["targeting"] = {}
    if rng.random() < 0.2:
        definition["metadata"] = {"team": "growth", "version": rng.randint(1, 9)}
    return definition


def _variant_value(rng: random.Random, kind: str, index: int) -> Any:
    if kind == "bool":
        return index % 2 == 0
    if kind == "str":
        return f"value-{index}"
    if kind == "int":
        return index * 10
    if kind == "float":
        return index + 0.5
    return {"index": index, "label": f"v{index}"}


def targeting(rng: random.Random, names: list[str]) -> dict[str, Any]:
    """A top-level rule: an ``if`` chain, a ``fractional`` split, or a bare expression."""
    roll = rng.random()
    if roll < 0.5:
        return _if_chain(rng, names)
    if roll < 0.8:
        return fractional(rng, names)
    if roll < 0.9:
        return {"if": [condition(rng, 2), fractional(rng, names), _variant(rng, names)]}
    return condition(rng, 2)


def _variant(rng: random.Random, names: list[str]) -> Any:
    roll = rng.random()
    if roll < 0.85:
        return rng.choice(names)
    if roll < 0.92:
        return None
    return rng.choice(["missing-variant", True, 1])


def _if_chain(rng: random.Random, names: list[str]) -> dict[str, Any]:
    args: list[Any] = []
    for _ in range(rng.randint(1, 4)):
        args += [condition(rng, 3), _variant(rng, names)]
    if rng.random() < 0.7:
        args.append(_variant(rng, names))
    return {"if": args}


def fractional(rng: random.Random, names: list[str]) -> dict[str, Any]:
    """``fractional`` with a bucketing expression, the shorthand, or odd weights."""
    buckets: list[Any] = []
    for name in rng.sample(names, rng.randint(1, len(names))):
        roll = rng.random()
        if roll < 0.8:
            buckets.append([name, rng.randint(0, 100)])
        elif roll < 0.9:
            buckets.append([name])
        else:
            buckets.append([name, rng.choice([-10, 0, 1])])
    roll = rng.random()
    if roll < 0.35:
        return {"fractional": buckets}
    if roll < 0.6:
        by: Any = {"var": "targetingKey"}
    elif roll < 0.8:
        by = {"cat": [{"var": "$flagd.flagKey"}, {"var": rng.choice(["email", "user.name", "id"])}]}
    else:
        by = {"var": rng.choice(KEYS)}
    return {"fractional": [by, *buckets]}


def value(rng: random.Random, depth: int) -> Any:
    """A value expression: a var, a literal, or arithmetic and strings over them."""
    roll = rng.random()
    if depth <= 0 or roll < 0.45:
        return _var(rng)
    if roll < 0.6:
        return _literal(rng)
    op = rng.choice(["+", "-", "*", "/", "%", "max", "min", "cat", "substr", "merge", "if", "map"])
    if op in ("+", "*", "max", "min", "cat", "merge"):
        return {op: [value(rng, depth - 1) for _ in range(rng.randint(1, 3))]}
    if op in ("-", "/", "%"):
        return {op: [value(rng, depth - 1), value(rng, depth - 1)]}
    if op == "substr":
        return {op: [value(rng, depth - 1), rng.randint(-4, 4), rng.randint(-3, 5)]}
    if op == "map":
        return {"map": [{"var": "tags"}, {"cat": [{"var": ""}, "!"]}]}
    return {"if": [condition(rng, depth - 1), value(rng, depth - 1), value(rng, depth - 1)]}


def _var(rng: random.Random) -> Any:
    key = rng.choice([*KEYS, "user.name", "user.tier", "tags.0", "tags.length", "missing"])
    roll = rng.random()
    if roll < 0.7:
        return {"var": key}
    if roll < 0.85:
        return {"var": [key, _literal(rng)]}
    return {"var": rng.choice(["$flagd.flagKey", "targetingKey", "$flagd.timestamp"])}


def _literal(rng: random.Random) -> Any:
    return rng.choice(
        [0, 1, 18, 21.5, -3, "", "pro", "de", "example.com", "1.0.0", None, ["pro", "free"]]
    )


def condition(rng: random.Random, depth: int) -> dict[str, Any]:
    """A boolean-ish expression over the context."""
    ops = ["==", "!=", "===", "!==", "<", "<=", ">", ">=", "between", "in", "in-str"]
    ops += ["starts_with", "ends_with", "sem_ver", "!", "!!", "missing", "missing_some"]
    ops += ["some", "all", "none", "filter"]
    if depth > 0:
        ops += ["and", "or", "and", "or", "if"]
    op = rng.choice(ops)
    if op in ("and", "or"):
        return {op: [condition(rng, depth - 1) for _ in range(rng.randint(1, 3))]}
    if op == "if":
        return {"if": [condition(rng, depth - 1), condition(rng, depth - 1), condition(rng, 0)]}
    return _leaf_condition(rng, op, depth)


def _leaf_condition(rng: random.Random, op: str, depth: int) -> dict[str, Any]:
    """A condition that does not combine other conditions (same draws as before the split)."""
    if op == "between":
        return {rng.choice(["<", "<="]): [rng.randint(0, 30), _var(rng), rng.randint(20, 90)]}
    if op == "in":
        options = rng.sample([*TIERS, *COUNTRIES, 1, 18], rng.randint(1, 4))
        return {"in": [_var(rng), options]}
    if op == "in-str":
        return {"in": [rng.choice(["@", "example", "pro", "1"]), _var(rng)]}
    if op in ("starts_with", "ends_with"):
        affix = rng.choice(["a", "j", "@example.com", ".com", "pro", ""])
        return {op: [_var(rng), affix]}
    if op == "sem_ver":
        operator = rng.choice(["=", "!=", "<", "<=", ">", ">=", "^", "~"])
        return {"sem_ver": [{"var": "version"}, operator, rng.choice(VERSIONS[:6])]}
    if op in ("!", "!!"):
        return {op: [value(rng, depth)]}
    if op == "missing":
        return {"!": {"missing": rng.sample(KEYS, rng.randint(1, 3))}}
    if op == "missing_some":
        return {"!": {"missing_some": [rng.randint(0, 2), rng.sample(KEYS, 3)]}}
    if op in ("some", "all", "none"):
        return {op: [{"var": "tags"}, {"==": [{"var": ""}, rng.choice(["vip", "a", "staff"])]}]}
    if op == "filter":
        return {"!!": {"filter": [{"var": "tags"}, {"!=": [{"var": ""}, "a"]}]}}
    return {op: [value(rng, depth), value(rng, depth) if rng.random() < 0.5 else _literal(rng)]}
