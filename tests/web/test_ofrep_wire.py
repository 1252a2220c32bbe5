"""`Contexts`, the fast path's parse of OFREP bodies remembered by their bytes: it answers
what `parse_context` answers, and what a client can make it hold stays bounded."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from app.web.ofrep_wire import CONTEXT_CACHE_BYTES, Contexts, parse_context

BODY = b'{"context":{"targetingKey":"user-1","email":"ann@example.com"}}'


def test_a_repeated_body_is_parsed_once() -> None:
    contexts = Contexts()
    first = contexts(BODY)
    assert first == {"targetingKey": "user-1", "email": "ann@example.com"}
    assert contexts(bytes(bytearray(BODY))) is first  # equal bytes, another object


def test_refusals_and_long_bodies_are_not_kept() -> None:
    contexts = Contexts()
    refusals = (b"{", b"[]", b'{"context":[]}', b'{"context":{"targetingKey":1}}')
    for raw in refusals:
        assert contexts(raw) == parse_context(raw)
    long = orjson.dumps({"context": {"targetingKey": "u", "pad": "x" * CONTEXT_CACHE_BYTES}})
    assert contexts(long) == parse_context(long)
    assert contexts._contexts == {}


def test_at_most_size_bodies_are_held() -> None:
    contexts = Contexts(size=8)
    for user in range(100):
        raw = b'{"context":{"targetingKey":"user-%d"}}' % user
        assert contexts(raw) == {"targetingKey": f"user-{user}"}
        assert len(contexts._contexts) <= 8


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=64) | st.sampled_from([BODY, b"{}", b""]), max_size=20))
def test_the_same_answer_as_parse_context_whatever_the_order(bodies: list[bytes]) -> None:
    contexts = Contexts(size=4)
    for raw in bodies:
        assert contexts(raw) == parse_context(raw)
