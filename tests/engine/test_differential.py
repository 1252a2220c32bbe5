"""Our engine against ``openfeature-flagd-core`` 2.x (flagd's Python evaluator) as an oracle.

Thousands of generated flags and contexts (tests/engine/generate.py, fixed seed) are
resolved by both; value, variant, reason and error code must agree. Where they do not,
the disagreement must be one we judged to be the oracle's (docs/engine.md):

* ``oracle-crash``: the oracle raises ``ZeroDivisionError`` for ``/`` and ``%`` by zero
  where flagd answers; we answer too. No other exception is excused, and the crashes are
  counted apart from agreement (plain and typed calls alike) and pinned exactly.
* ``oracle-bool-spelling``: the oracle turns booleans into ``"True"``/``"False"`` when
  JsonLogic needs a string (``cat``, ``in`` on strings, ``substr``); flagd and JsonLogic
  say ``"true"``/``"false"``. Proven by re-running the oracle with that one function fixed.
* ``oracle-bool-as-float``: asked for a float, the oracle accepts a boolean variant
  (``bool`` is an ``int`` in Python) and answers 1.0 or 0.0; we answer TYPE_MISMATCH.

Anything else fails the test with the flag, context and both outcomes. A second pass
resolves each case with a typed call (boolean, string, integer, float or object, chosen at
random) to compare TYPE_MISMATCH handling too.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from app.engine import CompiledFlag, Resolution, compile_flag, evaluate, evaluate_typed
from tests.engine import generate
from tests.engine.json_equality import same_json

flagd_core = pytest.importorskip("openfeature.contrib.tools.flagd.core")
json_logic_builtins = pytest.importorskip("json_logic.builtins")
from openfeature.evaluation_context import EvaluationContext  # noqa: E402
from openfeature.exception import OpenFeatureError  # noqa: E402

SEED = 20261125
FLAGS = 1000
CONTEXTS_PER_FLAG = 4
DEFAULT = "<caller default>"
#: The oracle's crashes with SEED: only ZeroDivisionError is documented (docs/engine.md);
#: any other kind, or a different count, means the generator or the oracle changed.
EXPECTED_ORACLE_CRASHES = {"oracle-crash (ZeroDivisionError)": 102}

Outcome = tuple[Any, str | None, str, str | None]


def _ours(flag: CompiledFlag | list[Any], attributes: dict[str, Any], key: str | None) -> Outcome:
    assert isinstance(flag, CompiledFlag), flag
    context = dict(attributes)
    if key is not None:
        context["targetingKey"] = key
    result: Resolution = evaluate(flag, context, int(time.time()))
    value = DEFAULT if result.variant is None else result.value
    code = result.error_code.value if result.error_code else None
    if code is not None:
        value = DEFAULT
    return value, result.variant, result.reason.value, code


def _theirs(
    flag_key: str, definition: dict[str, Any], attributes: dict[str, Any], key: str | None
) -> Outcome | str:
    """The oracle's outcome, or ``crash:<Exception>`` when it raises a non-OpenFeature error."""
    core = flagd_core.FlagdCore()
    core.set_flags({"flags": {flag_key: copy.deepcopy(definition)}})
    context = EvaluationContext(targeting_key=key, attributes=copy.deepcopy(attributes))
    try:
        result = core._resolve(flag_key, DEFAULT, context, None)
    except OpenFeatureError as error:
        return DEFAULT, None, "ERROR", error.error_code.value
    except Exception as error:  # the oracle's own bugs; see module docstring
        return f"crash:{type(error).__name__}"
    reason = result.reason.value if hasattr(result.reason, "value") else str(result.reason)
    return result.value, result.variant, reason, None


#: Typed calls: our expected type and the oracle's resolver for it.
TYPED = {
    "boolean": (bool, "resolve_boolean_value"),
    "string": (str, "resolve_string_value"),
    "integer": (int, "resolve_integer_value"),
    "float": (float, "resolve_float_value"),
    "object": (object, "resolve_object_value"),
}


def _ours_typed(
    flag: CompiledFlag, attributes: dict[str, Any], key: str | None, kind: str
) -> Outcome:
    context = {**attributes, **({"targetingKey": key} if key is not None else {})}
    result = evaluate_typed(flag, context, int(time.time()), TYPED[kind][0], default=DEFAULT)
    code = result.error_code.value if result.error_code else None
    return (DEFAULT if code else result.value), result.variant, result.reason.value, code


def _theirs_typed(
    flag_key: str,
    definition: dict[str, Any],
    attributes: dict[str, Any],
    key: str | None,
    kind: str,
) -> Outcome | str:
    core = flagd_core.FlagdCore()
    core.set_flags({"flags": {flag_key: copy.deepcopy(definition)}})
    context = EvaluationContext(targeting_key=key, attributes=copy.deepcopy(attributes))
    try:
        result = getattr(core, TYPED[kind][1])(flag_key, DEFAULT, context)
    except OpenFeatureError as error:
        return DEFAULT, None, "ERROR", error.error_code.value
    except Exception as error:
        return f"crash:{type(error).__name__}"
    reason = result.reason.value if hasattr(result.reason, "value") else str(result.reason)
    return result.value, result.variant, reason, None


def _outcomes_agree(ours: Outcome, theirs: Outcome) -> bool:
    return all(same_json(x, y) for x, y in zip(ours, theirs, strict=True))


@contextmanager
def _oracle_with_js_booleans() -> Iterator[None]:
    original = json_logic_builtins.to_string

    def to_string(value: Any) -> str:
        if value is True:
            return "true"
        if value is False:
            return "false"
        if isinstance(value, list):
            return ",".join(to_string(item) for item in value)
        return str(original(value))

    json_logic_builtins.to_string = to_string
    try:
        yield
    finally:
        json_logic_builtins.to_string = original


def test_engine_agrees_with_flagd_core() -> None:
    logging.getLogger("openfeature.contrib").disabled = True  # it logs every null operation
    rng = random.Random(SEED)  # noqa: S311, RUF100 (seeded: reproducible cases)
    tally: Counter[str] = Counter()
    mismatches: list[str] = []
    for index in range(FLAGS):
        flag_key = f"flag-{index}"
        definition = generate.flag(rng)
        compiled = compile_flag(flag_key, definition)
        if not isinstance(compiled, CompiledFlag):
            mismatches.append(f"{flag_key} rejected: {compiled} {definition}")
            continue
        for _ in range(CONTEXTS_PER_FLAG):
            key, attributes = generate.context(rng)
            ours = _ours(compiled, attributes, key)
            theirs = _theirs(flag_key, definition, attributes, key)
            if isinstance(theirs, str):
                tally[f"oracle-crash ({theirs[6:]})"] += 1
                continue
            if _outcomes_agree(ours, theirs):
                tally["agree"] += 1
                kind = rng.choice(sorted(TYPED))
                typed_ours = _ours_typed(compiled, attributes, key, kind)
                typed_theirs = _theirs_typed(flag_key, definition, attributes, key, kind)
                if isinstance(typed_theirs, str):
                    tally[f"typed oracle-crash ({typed_theirs[6:]})"] += 1
                elif _outcomes_agree(typed_ours, typed_theirs):
                    tally["typed agree"] += 1
                elif (
                    kind == "float"
                    and typed_ours[3] == "TYPE_MISMATCH"
                    and isinstance(definition["variants"].get(typed_theirs[1]), bool)
                ):
                    tally["oracle-bool-as-float"] += 1
                else:
                    mismatches.append(
                        f"{flag_key} {definition} typed {kind}\n  context={attributes} "
                        f"key={key!r}\n  ours={typed_ours}\n  theirs={typed_theirs}"
                    )
                continue
            with _oracle_with_js_booleans():
                fixed = _theirs(flag_key, definition, attributes, key)
            if not isinstance(fixed, str) and _outcomes_agree(ours, fixed):
                tally["oracle-bool-spelling"] += 1
                continue
            mismatches.append(
                f"{flag_key} {definition}\n  context={attributes} key={key!r}\n"
                f"  ours={ours}\n  theirs={theirs}"
            )
    print(f"\ndifferential: {dict(tally)}")
    assert not mismatches, f"{len(mismatches)} disagreements:\n" + "\n".join(mismatches[:10])
    crashes = {kind: count for kind, count in tally.items() if "oracle-crash" in kind}
    assert crashes == EXPECTED_ORACLE_CRASHES, crashes
    typed = tally["typed agree"] + tally["oracle-bool-as-float"]
    assert typed == tally["agree"], "every agreeing case gets a typed call, counted once"
    assert tally["agree"] >= 0.95 * FLAGS * CONTEXTS_PER_FLAG
