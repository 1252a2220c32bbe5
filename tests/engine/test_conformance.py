"""flagd-testbed 3.9.0 run through our engine, scenario by scenario.

The testbed is read from ``../shared/conformance/flagd-testbed`` (never copied into the
repo). Two suites apply to an in-process evaluator:

* ``evaluator/gherkin/*.feature`` with ``evaluator/flags/testkit-flags.json``;
* ``gherkin/*.feature`` (provider suites) with ``flags/*.json`` ("allFlags" is every
  file but the selector ones, which are loaded alone when a scenario selects them).

Fractional examples tagged ``@fractional-v1``/``-v2``/``-v3`` run with the flag set
pinned to that generation through ``flagstream.fractional`` metadata; untagged ones run
with the default (v3). Scenarios tagged for a daemon (``NOT_APPLICABLE``) or with a
step from ``NOT_EVALUATION_STEPS`` (provider configuration, events, connections) are
skipped with that reason; a step in neither list fails the scenario, so a new testbed
release cannot silently skip what it adds. The exact counts are pinned below.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from app.engine import (
    FRACTIONAL_VERSION_KEY,
    CompiledFlag,
    Resolution,
    compile_flag_set,
    evaluate_typed,
)
from tests.engine.gherkin import Case, Step, parse

CONFORMANCE = Path(__file__).resolve().parents[2].parent / "shared" / "conformance"
TESTBED = CONFORMANCE / "flagd-testbed"
NOW = 1_700_000_000

#: Tags of scenarios that cannot apply to an in-process engine, with the reason.
NOT_APPLICABLE = {
    "@contextEnrichment": "needs context injected by a flagd sync stream (injectedmetadata)",
    "@deprecated": "superseded by @no-default-variant, which runs (contradicts it)",
    "@grace": "needs a flagd connection that can be lost",
    "@caching": "needs a flagd RPC cache",
}

#: Steps of scenarios that test something other than evaluation, with the reason each.
NOT_EVALUATION_STEPS: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r'a config was initialized|an environment variable "FLAGD_\w+" with value ".*"'),
        "tests the flagd provider's configuration (options, environment), not evaluation",
    ),
    (
        re.compile(r"a (change|ready) event handler"),
        "tests provider events, which an SDK provider emits, not an evaluator",
    ),
    (
        re.compile(r"a (forbidden|socket|ssl|syncpayload|unavailable) flagd provider"),
        "needs a running flagd reached over a connection (socket, TLS, sync stream)",
    ),
]

#: Scenarios of flagd-testbed 3.9.0: all, run, and skipped by reason (tag or step).
EXPECTED_CASES = 556
EXPECTED_APPLICABLE = 427
EXPECTED_SKIPS = {
    "@caching": 15,
    "@contextEnrichment": 4,
    "@deprecated": 7,
    "@grace": 4,
    "configuration": 88,  # gherkin/config.feature has 96: 8 more are counted as @caching
    "events": 5,
    "connection": 6,
}

_TYPES: dict[str, type] = {
    "Boolean": bool,
    "String": str,
    "Integer": int,
    "Float": float,
    "Object": object,
}


def _cases() -> list[Case]:
    if not TESTBED.is_dir():
        return []
    files = sorted((TESTBED / "evaluator" / "gherkin").glob("*.feature"))
    files += sorted((TESTBED / "gherkin").glob("*.feature"))
    return [case for path in files for case in parse(path, str(path.relative_to(TESTBED)))]


def _suite(case: Case) -> str:
    return "evaluator" if case.feature.startswith("evaluator/") else "provider"


_CASES = _cases()


def _version(tags: frozenset[str]) -> str | None:
    for version in ("v1", "v2", "v3"):
        if f"@fractional-{version}" in tags:
            return version
    return None


@cache
def _documents(source: str) -> tuple[Mapping[str, Any], ...]:
    """The flag documents of a flag source name (``evaluator``, ``allFlags`` or a file)."""
    if source == "evaluator":
        paths = [TESTBED / "evaluator" / "flags" / "testkit-flags.json"]
    elif source == "allFlags":
        # flagd's allFlags.json is every file merged: flags and $evaluators together.
        merged: dict[str, Any] = {"flags": {}, "$evaluators": {}}
        for path in sorted((TESTBED / "flags").glob("*.json")):
            if "selector" not in path.name:
                document = json.loads(path.read_text(encoding="utf-8"))
                merged["flags"].update(document.get("flags", {}))
                merged["$evaluators"].update(document.get("$evaluators", {}))
        return (merged,)
    else:
        paths = [TESTBED / "flags" / source]
    return tuple(json.loads(path.read_text(encoding="utf-8")) for path in paths)


@cache
def _flags(source: str, version: str | None) -> Mapping[str, CompiledFlag]:
    flags: dict[str, CompiledFlag] = {}
    for document in _documents(source):
        if version is not None:
            metadata = {**document.get("metadata", {}), FRACTIONAL_VERSION_KEY: version}
            document = {**document, "metadata": metadata}
        compiled, problems = compile_flag_set(document)
        assert not problems, problems
        flags.update(compiled)
    return flags


@dataclass
class Run:
    """The state a scenario builds up step by step."""

    source: str
    version: str | None
    flag_key: str = ""
    expected_type: type = object
    default: Any = None
    context: dict[str, Any] = field(default_factory=dict)
    result: Resolution | None = None


def _typed(kind: str, text: str) -> Any:
    """A value written in a feature file, as the type the step names."""
    if kind == "Boolean":
        return text == "true"
    if kind == "Integer":
        return int(text)
    if kind == "Float":
        return float(text)
    if kind == "Object":
        return json.loads(text.replace('\\"', '"'))
    return text


def _option(run: Run, name: str, kind: str, value: str) -> None:
    if name == "selector":
        run.source = "allFlags" if value == "flags/allFlags.json" else value.split("/", 1)[1]


def _flag(run: Run, kind: str, key: str, default: str) -> None:
    run.flag_key, run.expected_type = key, _TYPES[kind]
    run.default = _typed(kind, default)


def _evaluate(run: Run) -> None:
    flag = _flags(run.source, run.version).get(run.flag_key)
    run.result = evaluate_typed(
        flag,
        run.context,
        NOW,
        run.expected_type,
        flag_key=run.flag_key,
        default=run.default,
    )


def _value_is(run: Run, text: str) -> None:
    assert run.result is not None
    kind = next(k for k, t in _TYPES.items() if t is run.expected_type)
    assert run.result.value == _typed(kind, text), run.result


def _metadata_contains(run: Run, table: tuple[tuple[str, ...], ...]) -> None:
    assert run.result is not None
    header, *rows = table
    for row in rows:
        entry = dict(zip(header, row, strict=True))
        expected = _typed(entry["metadata_type"], entry["value"])
        assert run.result.metadata[entry["key"]] == expected, run.result.metadata


#: Step text patterns and what each does to a Run; a scenario with any other step does
#: not apply to an in-process engine.
STEPS: list[tuple[re.Pattern[str], Callable[..., None]]] = [
    (re.compile(r"an evaluator|a stable flagd provider|a metadata flagd provider"), lambda r: None),
    (re.compile(r'an option "([^"]*)" of type "([^"]*)" with value "([^"]*)"'), _option),
    (
        re.compile(r'a (\w+)-flag with key "([^"]*)" and a (?:fallback|default) value "(.*)"'),
        _flag,
    ),
    (
        re.compile(
            r'a context containing a key "([^"]*)", with type "(\w+)" and with value "(.*)"'
        ),
        lambda r, key, kind, value: r.context.__setitem__(key, _typed(kind, value)),
    ),
    (
        re.compile(
            r'a context containing a nested property with outer key "([^"]*)" '
            r'and inner key "([^"]*)", with value "(.*)"'
        ),
        lambda r, outer, inner, value: r.context.setdefault(outer, {}).__setitem__(inner, value),
    ),
    (
        re.compile(r'a context containing a targeting key with value "(.*)"'),
        lambda r, value: r.context.__setitem__("targetingKey", value),
    ),
    (re.compile(r"the flag was evaluated with details"), _evaluate),
    (re.compile(r'the resolved details value should be "(.*)"'), _value_is),
    (
        re.compile(r'the reason should be "([^"]*)"'),
        lambda r, reason: _check(r, "reason", reason),
    ),
    (
        re.compile(r'the error-code should be "([^"]*)"'),
        lambda r, code: _check(r, "error_code", code or None),
    ),
    (
        re.compile(r'the variant should be "([^"]*)"'),
        lambda r, variant: _check(r, "variant", variant),
    ),
    (re.compile(r"the resolved metadata is empty"), lambda r: _check(r, "metadata", {})),
]


def _check(run: Run, attribute: str, expected: Any) -> None:
    assert run.result is not None
    actual = getattr(run.result, attribute)
    if attribute == "metadata":
        assert dict(actual) == expected, run.result
    else:
        assert actual == expected, run.result


def _match(step: Step) -> tuple[Callable[..., None], tuple[str, ...]] | None:
    if step.text == "the resolved metadata should contain":
        return (lambda r: _metadata_contains(r, step.table)), ()
    for pattern, action in STEPS:
        found = pattern.fullmatch(step.text)
        if found is not None:
            return action, found.groups()
    return None


def _why_not_applicable(case: Case) -> str | None:
    for tag, reason in NOT_APPLICABLE.items():
        if tag in case.tags:
            return f"{tag}: {reason}"
    unmatched = [step.text for step in case.steps if _match(step) is None]
    for pattern, reason in NOT_EVALUATION_STEPS:  # in order: configuration first
        for text in unmatched:
            if pattern.fullmatch(text):
                return f"{reason}: step {text!r}"
    return None


def _skip_kind(reason: str) -> str:
    """The key of ``EXPECTED_SKIPS`` a skip reason counts under."""
    if reason.startswith("@"):
        return reason.split(":", 1)[0]
    kinds = {"configuration": "configuration", "events": "events", "running flagd": "connection"}
    return next(kind for word, kind in kinds.items() if word in reason)


def applicable_cases() -> list[Case]:
    """The cases our engine runs (used by the docs and the count test)."""
    return [case for case in _CASES if _why_not_applicable(case) is None]


@pytest.mark.parametrize("case", _CASES or [None], ids=lambda c: c.id if c else "absent")
def test_scenario(case: Case | None) -> None:
    if case is None:
        pytest.skip(f"flagd-testbed not found at {TESTBED}; conformance scenarios not run")
    reason = _why_not_applicable(case)
    if reason is not None:
        pytest.skip(reason)
    run = Run("evaluator" if _suite(case) == "evaluator" else "allFlags", _version(case.tags))
    for step in case.steps:
        matched = _match(step)
        assert matched is not None, f"step neither run nor known to need a daemon: {step.text!r}"
        action, arguments = matched
        action(run, *arguments)


def test_exactly_the_known_scenarios_apply() -> None:
    """Guards against a parser or testbed change silently skipping (or adding) scenarios."""
    if not _CASES:
        pytest.skip(f"flagd-testbed not found at {TESTBED}")
    skipped: dict[str, int] = {}
    for case in _CASES:
        reason = _why_not_applicable(case)
        if reason is not None:
            skipped[_skip_kind(reason)] = skipped.get(_skip_kind(reason), 0) + 1
    assert len(_CASES) == EXPECTED_CASES
    assert len(applicable_cases()) == EXPECTED_APPLICABLE
    assert skipped == EXPECTED_SKIPS
