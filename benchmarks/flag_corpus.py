"""Generated flagd flags with realistic rules, for the compile and start-up benchmarks.

A production environment holds thousands of flags, most of them plain switches and the rest
targeting: if/else chains over context attributes (``in``, ``ends_with``, ``starts_with``,
``sem_ver``, ``==``, ``<``), nested ``and``/``or``, ``fractional`` rollouts and shared rules
from ``$evaluators``. The mix here is seeded (``random.Random``), so every run of a
benchmark compiles the same corpus.

* ``generated_flag_set(n, seed)``: a flagd document, shared rules as ``{"$ref": ...}``;
* ``generated_flags(n, seed)``: the same flags self-contained (``$ref``s inlined), as the
  flag table stores them and the replicas compile them.

    from benchmarks.flag_corpus import generated_flags
    flags = generated_flags(10_000, seed=1)   # {key: definition}
"""

from __future__ import annotations

import copy
import random
from typing import Any

__all__ = ["EVALUATORS", "generated_flag_set", "generated_flags"]

#: Shared rules, as a team keeps them in ``$evaluators`` and flags reference by name.
EVALUATORS: dict[str, Any] = {
    "internal_users": {
        "or": [
            {"ends_with": [{"var": "email"}, "@corp.example"]},
            {"in": [{"var": "email"}, ["qa@example.com", "ops@example.com"]]},
        ]
    },
    "beta_cohort": {
        "and": [
            {"==": [{"var": "beta"}, True]},
            {"sem_ver": [{"var": "appVersion"}, ">=", "3.2.0"]},
        ]
    },
    "paying_eu": {
        "and": [
            {"in": [{"var": "tier"}, ["pro", "premium", "enterprise"]]},
            {"in": [{"var": "country"}, ["DE", "FR", "NL", "IT", "ES", "PL", "SE"]]},
        ]
    },
}

_COUNTRIES = ["DE", "FR", "NL", "US", "GB", "JP", "BR", "IN", "IT", "ES", "PL", "SE", "CA"]
_TIERS = ["free", "pro", "premium", "enterprise"]
_DOMAINS = ["@corp.example", "@example.com", "@partner.test", "@mail.test"]
_PLATFORMS = ["ios-", "android-", "web-", "desktop-"]
_VERSIONS = ["1.4.0", "2.0.0", "2.3.1", "3.0.0", "3.2.0", "4.0.0-beta.1"]
_SEMVER_OPS = [">=", "<", "^", "~", "=", ">"]


def generated_flags(n: int, seed: int = 1) -> dict[str, dict[str, Any]]:
    """``n`` self-contained flag definitions (shared rules inlined), keyed ``flag-00000``..."""
    document = generated_flag_set(n, seed)
    return {key: _inlined(flag) for key, flag in document["flags"].items()}


def generated_flag_set(n: int, seed: int = 1) -> dict[str, Any]:
    """A flagd document of ``n`` flags whose rules may reference ``EVALUATORS``."""
    rng = random.Random(seed)
    flags = {f"flag-{i:05d}": _flag(rng) for i in range(n)}
    return {"$evaluators": copy.deepcopy(EVALUATORS), "flags": flags}


def _flag(rng: random.Random) -> dict[str, Any]:
    """One flag: about a third static switches, the rest targeted (a tenth disabled)."""
    variants = _variants(rng)
    names = list(variants)
    definition: dict[str, Any] = {
        "state": "DISABLED" if rng.random() < 0.1 else "ENABLED",
        "variants": variants,
        "defaultVariant": names[-1],
    }
    roll = rng.random()
    if roll < 0.3:
        return definition
    if roll < 0.45:
        definition["targeting"] = _fractional(rng, names)
    else:
        definition["targeting"] = _chain(rng, names)
    if rng.random() < 0.3:
        definition["metadata"] = {"owner": rng.choice(["growth", "payments", "search"])}
    return definition


def _variants(rng: random.Random) -> dict[str, Any]:
    kind = rng.random()
    if kind < 0.6:
        return {"on": True, "off": False}
    if kind < 0.8:
        return {"blue": "#0055ff", "green": "#00aa55", "control": "#888888"}
    if kind < 0.9:
        return {"large": 50, "medium": 25, "small": 10}
    return {
        "sale": {"currency": "EUR", "discountPercent": 15},
        "standard": {"currency": "EUR", "discountPercent": 0},
    }


def _chain(rng: random.Random, names: list[str]) -> dict[str, Any]:
    """An if/else chain of 1-5 conditions, each picking a variant; the last arm a fallback."""
    arms: list[Any] = []
    for _ in range(rng.randint(1, 5)):
        arms += [_condition(rng, depth=0), rng.choice(names)]
    roll = rng.random()
    if roll < 0.25:
        arms.append(_fractional(rng, names))
    elif roll < 0.85:
        arms.append(names[-1])
    return {"if": arms}


def _condition(rng: random.Random, depth: int) -> Any:
    """A test on the context: a leaf, a shared rule, or a nested and/or of them."""
    roll = rng.random()
    if roll < 0.1:
        return {"$ref": rng.choice(list(EVALUATORS))}
    if roll < 0.3 and depth < 2:
        parts = [_condition(rng, depth + 1) for _ in range(rng.randint(2, 3))]
        return {rng.choice(["and", "or"]): parts}
    return _leaf(rng)


def _leaf(rng: random.Random) -> dict[str, Any]:
    """One comparison of a context attribute, of the kinds real flags use."""
    kind = rng.randrange(7)
    if kind == 0:
        countries = rng.sample(_COUNTRIES, rng.randint(1, 6))
        return {"in": [{"var": "country"}, countries]}
    if kind == 1:
        return {
            "in": [rng.choice(["staff", "vip", "@corp"]), {"var": rng.choice(["email", "tags"])}]
        }
    if kind == 2:
        return {"ends_with": [{"var": "email"}, rng.choice(_DOMAINS)]}
    if kind == 3:
        return {"starts_with": [{"var": "platform"}, rng.choice(_PLATFORMS)]}
    if kind == 4:
        operand = rng.choice(_VERSIONS)
        return {"sem_ver": [{"var": "appVersion"}, rng.choice(_SEMVER_OPS), operand]}
    if kind == 5:
        return {"==": [{"var": rng.choice(["tier", "user.tier"])}, rng.choice(_TIERS)]}
    return {"<": [{"var": rng.choice(["age", "score"])}, rng.randint(13, 90)]}


def _fractional(rng: random.Random, names: list[str]) -> dict[str, Any]:
    """A rollout: weights over the variants, bucketed by targeting key or a chosen attribute."""
    weights = [rng.randint(0, 100) for _ in names]
    if not any(weights):
        weights[0] = 1
    buckets: list[Any] = [[name, weight] for name, weight in zip(names, weights, strict=True)]
    if rng.random() < 0.3:
        by = {"cat": [{"var": "$flagd.flagKey"}, {"var": rng.choice(["user.id", "email"])}]}
        return {"fractional": [by, *buckets]}
    return {"fractional": buckets}


def _inlined(definition: dict[str, Any]) -> dict[str, Any]:
    """The flag with each ``{"$ref": name}`` replaced by a copy of the shared rule."""

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"$ref"}:
                return copy.deepcopy(EVALUATORS[value["$ref"]])
            return {key: walk(child) for key, child in value.items()}
        if isinstance(value, list):
            return [walk(child) for child in value]
        return value

    return walk(definition)
