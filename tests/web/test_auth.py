"""Credentials (`app/web/auth.py`): an SDK key selects its environment only when it is exactly
a configured key, however it was written on the wire."""

from __future__ import annotations

import dataclasses

import pytest

from app.infra.settings import Settings
from app.web.auth import ADMITTED_OBJECTS, Credentials

KEYS = {"key-dev-0123456789": "development", "kéy-prod-é": "production"}


@pytest.fixture(scope="module")
def credentials() -> Credentials:
    return Credentials(dataclasses.replace(Settings.from_env(), sdk_keys=dict(KEYS)))


@pytest.mark.parametrize(("key", "environment"), list(KEYS.items()))
def test_each_sdk_key_selects_its_environment(
    credentials: Credentials, key: str, environment: str
) -> None:
    # A string built at run time, as a request's header is: equal text, not the same object.
    assert credentials.sdk_key_environment("".join(list(key))) == environment


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "key-dev-012345678",  # a prefix
        "key-dev-0123456789x",  # an extension
        "KEY-DEV-0123456789",  # another case
        " key-dev-0123456789",
        "kéy-prod-é".encode().decode("latin-1"),  # the same bytes read as another charset
        "key-dev-0123456789\udcff",  # an undecodable byte kept as a surrogate (surrogateescape)
        "development",  # an environment is not a key
    ],
)
def test_anything_but_an_exact_key_selects_nothing(
    credentials: Credentials, token: str | None
) -> None:
    assert credentials.sdk_key_environment(token) is None


def test_an_admitted_key_object_is_remembered_by_identity_and_the_memory_is_bounded() -> None:
    credentials = Credentials(dataclasses.replace(Settings.from_env(), sdk_keys=dict(KEYS)))
    tokens = ["".join(list(key)) for key in KEYS for _ in range(3)]  # equal texts, new objects
    assert [credentials.admitted_environment(token) for token in tokens * 2] == [
        environment for environment in KEYS.values() for _ in range(3)
    ] * 2
    assert credentials.admitted_environment("not-a-key") is None
    assert credentials.admitted_environment(None) is None
    assert len(credentials._admitted) == len(tokens)  # neither a wrong key nor None is kept
    many = ["".join(list("key-dev-0123456789")) for _ in range(ADMITTED_OBJECTS + 10)]
    assert {credentials.admitted_environment(token) for token in many} == {"development"}
    assert len(credentials._admitted) <= ADMITTED_OBJECTS
