"""The request decoder and result encoder as data: no broker (app/evaluation/records.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.evaluation.records import (
    RESULT_RECORD_BYTES,
    TOO_LARGE,
    Invalid,
    Request,
    Requests,
    decode_requests,
    decode_results,
    encode_requests,
    encode_results,
    error_json,
    valid_reply_topic,
)
from app.infra.json_input import MAX_DEPTH
from app.infra.records import Rejection
from app.infra.topics import Topics

TOPICS = Topics.named("flagstream")
RESULTS = TOPICS.evaluation_results  # where results go unless a request asks otherwise
GOOD = {"request_id": "r1", "environment": "prod", "flags": ["a"], "context": {"x": 1}}


def raw(data: Any) -> bytes:
    return json.dumps(data).encode()


def test_a_single_request() -> None:
    decoded = decode_requests(raw({"schema": 1, **GOOD}), RESULTS)
    assert decoded == Requests(
        [Request("r1", "prod", ["a"], {"x": 1})], batch=False, reply_to=RESULTS
    )


def test_no_flags_means_every_flag_and_no_context_an_empty_one() -> None:
    decoded = decode_requests(raw({"schema": 1, "request_id": "r", "environment": "e"}), RESULTS)
    assert isinstance(decoded, Requests)
    assert decoded.items == [Request("r", "e", None, {})]


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (b"", "empty record"),
        (b"\xff\xfe", "not JSON"),
        (b"{nope", "not JSON"),
        (b"[1]", "must be a JSON object"),
        (raw({**GOOD}), "unknown schema"),
        (raw({"schema": 2, **GOOD}), "unknown schema"),
        (raw({"schema": 1, "requests": []}), "bad batch"),
        (raw({"schema": 1, "requests": {"a": 1}}), "bad batch"),
    ],
)
def test_unreadable_records_are_rejections(record: bytes, reason: str) -> None:
    decoded = decode_requests(record, RESULTS)
    assert isinstance(decoded, Rejection) and reason in decoded.reason


def test_a_request_nested_deeper_than_the_bound_is_malformed() -> None:
    """Kafka requests are parsed as every other edge (app.infra.json_input): a context 65
    containers deep is refused where it enters, not handed to the evaluator."""
    context: Any = True
    for _ in range(MAX_DEPTH):
        context = {"k": context}
    decoded = decode_requests(raw({"schema": 1, **GOOD, "context": context}), RESULTS)
    assert isinstance(decoded, Rejection)
    assert f"nested deeper than {MAX_DEPTH} levels" in decoded.reason
    at_bound = decode_requests(raw({"schema": 1, **GOOD, "context": context["k"]}), RESULTS)
    assert isinstance(at_bound, Requests)


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"request_id": ""}, "$.request_id"),
        ({"request_id": "x" * 201}, "$.request_id"),
        ({"environment": "no/slashes"}, "$.environment"),
        ({"flags": "a"}, "$.flags"),
        ({"flags": ["a", 3]}, "$.flags"),
        ({"context": [1]}, "$.context"),
        ({"context": "user-1"}, "$.context"),
        ({"reply_to": TOPICS.flag_changes}, "$.reply_to"),
        ({"reply_to": f"{RESULTS}.a/b"}, "$.reply_to"),
        ({"reply_to": "evaluation-results"}, "$.reply_to"),  # no prefix: another deployment's
    ],
)
def test_invalid_requests_keep_their_id_when_they_have_one(
    change: dict[str, Any], path: str
) -> None:
    decoded = decode_requests(raw({"schema": 1, **GOOD, **change}), RESULTS)
    assert isinstance(decoded, Requests)
    (item,) = decoded.items
    assert isinstance(item, Invalid) and [p for p, _ in item.problems] == [path]
    assert item.request_id == (None if path == "$.request_id" else "r1")
    assert decoded.reply_to == RESULTS


def test_a_batch_keeps_order_and_judges_each_item_alone() -> None:
    decoded = decode_requests(
        raw(
            {
                "schema": 1,
                "reply_to": f"{RESULTS}.svc",
                "requests": [
                    GOOD,
                    {**GOOD, "request_id": "r2", "context": 5},
                    7,
                    {**GOOD, "request_id": "r4", "reply_to": f"{RESULTS}.other"},
                    {**GOOD, "request_id": "r5", "reply_to": f"{RESULTS}.svc"},
                ],
            }
        ),
        RESULTS,
    )
    assert isinstance(decoded, Requests) and decoded.batch
    assert decoded.reply_to == f"{RESULTS}.svc"
    kinds = [(type(i).__name__, i.request_id) for i in decoded.items]
    assert kinds == [
        ("Request", "r1"),
        ("Invalid", "r2"),
        ("Invalid", None),
        ("Invalid", "r4"),
        ("Request", "r5"),
    ]
    assert [p for p, _ in decoded.problems] == [
        "$.requests[1].context",
        "$.requests[2]",
        "$.requests[3].reply_to",
    ]


def test_reply_topics_stay_in_the_results_namespace() -> None:
    assert valid_reply_topic(RESULTS, RESULTS)
    assert valid_reply_topic(f"{RESULTS}.checkout-svc_1", RESULTS)
    for topic in (
        TOPICS.flag_changes,
        TOPICS.flags_changelog,
        f"{RESULTS}.",
        f"{RESULTS}X",
        f"{RESULTS}.a.b",
        "evaluation-results",  # the same topic of another deployment (or none)
        Topics.named("other").evaluation_results,
        f"{Topics.named('other').evaluation_results}.svc",
    ):
        assert not valid_reply_topic(topic, RESULTS), topic


def test_what_a_client_sends_decodes_and_results_round_trip() -> None:
    record = encode_requests([("a", "e", {"k": 1}, None), ("b", "e", {}, ["f"])], f"{RESULTS}.x")
    decoded = decode_requests(record, RESULTS)
    assert isinstance(decoded, Requests) and len(decoded.items) == 2
    assert decoded.reply_to == f"{RESULTS}.x"
    invalid = Invalid("b", "e", (("$.context", "must be a JSON object"),))
    ((result,),) = map(decode_results, encode_results([error_json(invalid, 1.0)], batch=False))
    assert result.request_id == "b" and result.error is not None and result.flags == {}
    assert decode_results(b"\xff") == []


@given(st.binary())
def test_decoding_arbitrary_bytes_never_raises(data: bytes) -> None:
    decode_requests(data, RESULTS)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@given(
    st.dictionaries(
        st.sampled_from(
            ["schema", "request_id", "environment", "flags", "context", "reply_to", "requests"]
        ),
        json_values,
    )
)
def test_decoding_arbitrary_json_never_raises(data: dict[str, Any]) -> None:
    decoded = decode_requests(raw({"schema": 1, **data}), RESULTS)
    assert isinstance(decoded, Requests | Rejection)


def test_results_larger_than_a_record_are_split_in_order_or_replaced_by_an_error() -> None:
    def result(request_id: str, value: str) -> dict[str, Any]:
        flag = {
            "key": "k",
            "value": value,
            "variant": "on",
            "reason": "STATIC",
            "error_code": None,
            "error_message": None,
            "flag_version": 1,
        }
        return {
            "request_id": request_id,
            "environment": "e",
            "flags": [flag],
            "evaluated_at": 1.0,
            "error": None,
        }

    ids = [f"r{i}" for i in range(9000)]
    values = encode_results([result(i, "v" * 300) for i in ids], batch=True)
    assert len(values) > 1 and all(len(v) <= RESULT_RECORD_BYTES for v in values)
    assert [r.request_id for v in values for r in decode_results(v)] == ids
    for batch in (True, False):
        (value,) = encode_results([result("r", "v" * RESULT_RECORD_BYTES)], batch=batch)
        (answer,) = decode_results(value)
        assert answer.request_id == "r" and answer.flags == {}
        assert answer.error is not None and answer.error["code"] == TOO_LARGE
