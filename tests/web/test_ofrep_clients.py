"""Real OFREP clients against a real worker: PyPI `openfeature-sdk` + `openfeature-provider-ofrep`,
and npm `@openfeature/server-sdk` + `@openfeature/ofrep-provider` run by node (tests/web/js).

What an application sees through the OpenFeature SDK, not what our own HTTP helper parses:
every flag state resolves through both official providers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from app.engine import compile_flag, evaluate
from tests.conftest import REPO, SDK_KEY, Worker

ENV = "development"  # what SDK_KEY selects on the test worker
DOMAIN = "flagstream-ofrep-test"


@pytest.fixture(scope="module")
def client(worker: Worker) -> Iterator[OpenFeatureClient]:
    provider = OFREPProvider(
        worker.url, headers_factory=lambda: {"Authorization": f"Bearer {SDK_KEY}"}
    )
    api.set_provider_and_wait(provider, domain=DOMAIN)
    yield api.get_client(domain=DOMAIN)
    api.shutdown()


def put(worker: Worker, definition: dict[str, Any]) -> str:
    key = "c-" + uuid.uuid4().hex[:10]
    worker.admin().put(ENV, key, definition)
    return key


def static(variants: dict[str, Any], default: str) -> dict[str, Any]:
    return {"state": "ENABLED", "variants": variants, "defaultVariant": default}


def test_typed_resolutions(worker: Worker, client: OpenFeatureClient) -> None:
    boolean = put(worker, static({"on": True, "off": False}, "on"))
    string = put(worker, static({"a": "alpha", "b": "beta"}, "b"))
    integer = put(worker, static({"one": 1, "two": 2}, "two"))
    floating = put(worker, static({"half": 0.5, "whole": 1.0}, "half"))
    obj = put(worker, static({"cfg": {"limit": 3, "tags": ["x"]}, "none": {}}, "cfg"))
    context = EvaluationContext("user-1")

    details = client.get_boolean_details(boolean, False, context)
    assert (details.value, details.variant, details.reason) == (True, "on", Reason.STATIC)
    assert details.error_code is None
    assert client.get_string_details(string, "zzz", context).value == "beta"
    assert client.get_integer_details(integer, 0, context).value == 2
    assert client.get_float_details(floating, 0.0, context).value == 0.5
    assert client.get_object_details(obj, {}, context).value == {"limit": 3, "tags": ["x"]}


def test_targeting(worker: Worker, client: OpenFeatureClient) -> None:
    key = put(
        worker,
        {
            **static({"on": True, "off": False}, "off"),
            "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on", "off"]},
        },
    )
    ours = EvaluationContext("u", {"email": "ann@example.com"})
    theirs = EvaluationContext("u", {"email": "bob@elsewhere.org"})
    matched = client.get_boolean_details(key, False, ours)
    assert (matched.value, matched.variant, matched.reason) == (True, "on", "TARGETING_MATCH")
    assert client.get_boolean_details(key, True, theirs).value is False


def test_fractional_split_matches_the_engine(worker: Worker, client: OpenFeatureClient) -> None:
    definition = {
        **static({"control": "control", "treatment": "treatment"}, "control"),
        "targeting": {
            "if": [
                {"ends_with": [{"var": "email"}, "@example.com"]},
                {"fractional": [["control", 50], ["treatment", 50]]},
                "control",
            ]
        },
    }
    key = put(worker, definition)
    compiled = compile_flag(key, definition)
    assert not isinstance(compiled, list)
    seen = set()
    for n in range(30):
        attributes = {"email": f"user{n}@example.com"}
        expected = evaluate(compiled, {"targetingKey": f"user-{n}", **attributes}, int(time.time()))
        details = client.get_string_details(key, "none", EvaluationContext(f"user-{n}", attributes))
        assert (details.variant, details.value) == (expected.variant, expected.value)
        seen.add(details.variant)
    assert seen == {"control", "treatment"}


def test_a_missing_flag_gives_the_default(client: OpenFeatureClient) -> None:
    details = client.get_boolean_details("no-such-flag", True, EvaluationContext("u"))
    assert details.value is True
    assert details.error_code == ErrorCode.FLAG_NOT_FOUND
    assert details.reason == Reason.ERROR


# -- every flag state, through both official providers -------------------------------------

JS_CLIENT = REPO / "tests" / "web" / "js"
# Targeting that names "on" for example.com addresses and nothing (the default) otherwise.
TARGETED = {
    **static({"on": True, "off": False}, "off"),
    "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on"]},
}
NO_DEFAULT = {**TARGETED, "defaultVariant": None}
MATCHING = {"targetingKey": "u", "email": "ann@example.com"}
OTHER = {"targetingKey": "u", "email": "bob@elsewhere.org"}


def states(worker: Worker) -> dict[str, tuple[str, str, Any, dict[str, Any]]]:
    """Per state: (flag key, type asked for, the caller's default, context)."""
    enabled = put(worker, static({"on": True, "off": False}, "on"))
    text = put(worker, static({"a": "alpha", "b": "beta"}, "b"))
    disabled = put(worker, {**static({"on": True, "off": False}, "on"), "state": "DISABLED"})
    targeted, no_default = put(worker, TARGETED), put(worker, NO_DEFAULT)
    return {
        "enabled": (enabled, "boolean", False, {"targetingKey": "u"}),
        "string": (text, "string", "zzz", {"targetingKey": "u"}),
        "disabled": (disabled, "boolean", False, {"targetingKey": "u"}),
        "targeting-match": (targeted, "boolean", False, MATCHING),
        "default": (targeted, "boolean", True, OTHER),
        "no-default-variant": (no_default, "boolean", False, OTHER),
        "missing-flag": ("no-such-flag", "boolean", True, {"targetingKey": "u"}),
        "type-mismatch": (enabled, "string", "zzz", {"targetingKey": "u"}),
    }


# Per state: (value, variant, reason, error code). The caller's default where flagd gives it
# (disabled, no default variant: flagd-testbed `disabled.feature`), with no error.
EXPECTED: dict[str, tuple[Any, str | None, str, str | None]] = {
    "enabled": (True, "on", "STATIC", None),
    "string": ("beta", "b", "STATIC", None),
    "disabled": (False, "", "DISABLED", None),
    "targeting-match": (True, "on", "TARGETING_MATCH", None),
    "default": (False, "off", "DEFAULT", None),
    "no-default-variant": (False, "", "DEFAULT", None),
    "missing-flag": (True, None, "ERROR", "FLAG_NOT_FOUND"),
    "type-mismatch": ("zzz", None, "ERROR", "TYPE_MISMATCH"),
}


def test_every_flag_state_through_the_python_provider(
    worker: Worker, client: OpenFeatureClient
) -> None:
    """Was KeyError 'variant' (ERROR/GENERAL) on a disabled flag: the provider reads it always."""
    resolve = {"boolean": client.get_boolean_details, "string": client.get_string_details}
    seen = {}
    for state, (key, kind, default, attributes) in states(worker).items():
        rest = {name: value for name, value in attributes.items() if name != "targetingKey"}
        context = EvaluationContext(attributes["targetingKey"], rest)
        details = resolve[kind](key, default, context)
        code = details.error_code.value if details.error_code else None
        seen[state] = (details.value, details.variant, str(details.reason), code)
    assert seen == EXPECTED


# The official JavaScript provider: the newest release on the npm registry this machine reaches
# (0.1.3), and the newest upstream release (0.2.5) built from its source by `npm ci`.
NPM_PROVIDER = "@openfeature/ofrep-provider"
SOURCE_PROVIDER = JS_CLIENT / "dist" / "ofrep-provider-0.2.5.mjs"

# 0.1.3 throws on a 200 without `value` ("does not match the expected format"): GENERAL, with the
# caller's default. OFREP leaves the value out when the code default applies (`codeDefault`), and
# flagd-testbed requires the caller's default there, so no answer can satisfy 0.1.3 (a value must
# be of the caller's type, which the server cannot know); 0.2.2 implemented the code default.
JS_0_1_3_CODE_DEFAULT = (None, "ERROR", "GENERAL")


def resolve_in_node(worker: Worker, provider: str, cases: dict[str, Any]) -> dict[str, Any]:
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the JavaScript OFREP provider cannot run")
    assert (JS_CLIENT / "node_modules").is_dir() and SOURCE_PROVIDER.is_file(), (
        "run `npm ci --prefix tests/web/js` (bin/test does)"
    )
    evaluations = [
        {"flag": key, "type": kind, "default": default, "context": context}
        for key, kind, default, context in cases.values()
    ]
    request = {"baseUrl": worker.url, "sdkKey": SDK_KEY, "evaluations": evaluations}
    run = subprocess.run(
        ["node", str(JS_CLIENT / "resolve.mjs"), provider],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return dict(zip(cases, json.loads(run.stdout), strict=True))


def summary(results: dict[str, Any]) -> dict[str, tuple[Any, Any, Any, Any]]:
    return {
        state: (r["value"], r["variant"], r["reason"], r["errorCode"])
        for state, r in results.items()
    }


def test_every_flag_state_through_the_javascript_provider(worker: Worker) -> None:
    """The newest official provider resolves every state as flagd does, code default included."""
    results = resolve_in_node(worker, str(SOURCE_PROVIDER), states(worker))
    assert summary(results) == EXPECTED


def test_the_npm_release_of_the_javascript_provider(worker: Worker) -> None:
    """0.1.3 resolves every state but the two code defaults, which it cannot represent."""
    results = resolve_in_node(worker, NPM_PROVIDER, states(worker))
    expected = dict(EXPECTED)
    for state in ("disabled", "no-default-variant"):
        expected[state] = (EXPECTED[state][0], *JS_0_1_3_CODE_DEFAULT)
        assert "expected format" in results[state]["errorMessage"]
    assert summary(results) == expected
