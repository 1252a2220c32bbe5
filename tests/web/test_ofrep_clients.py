"""Real OFREP clients against a real worker: PyPI `openfeature-sdk` + `openfeature-provider-ofrep`.

What an application sees through the OpenFeature SDK, not what our own HTTP helper parses.
"""

from __future__ import annotations

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
from tests.conftest import SDK_KEY, Worker

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
