"""Bad records on every topic an agent reads, as data: each ends in a dead letter or an error
result, is counted, changes no flag, and the agent answers the next good record.

One worker, one batch of bad records per topic (then a good one) read back once, so the
module stays fast; each case is then its own test. Issue 8, part 2 item 2 (Kafka side).
`flag-changes`: every refusal is a dead letter with a code (docs/topics.md); unknown fields are
ignored. `evaluation-requests`: a record that cannot be read is a dead letter only; a request
that can be read but not evaluated also gets an error result; a flag that cannot be evaluated
is an error entry of an otherwise normal result.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from app.evaluation.client import EvaluationClient
from app.infra.records import MAX_DEAD_LETTER_PAYLOAD
from app.infra.topics import partition_for
from tests.conftest import Worker, flag, produce, read_topic, wait_until
from tests.costly_flags import COSTLY, DOUBLING
from tests.worker_topics import topics_of

PARTITIONS = 4  # FLAGSTREAM_FLAG_CHANGE_PARTITIONS of the test worker
RESULT_PARTITIONS = 8  # FLAGSTREAM_EVALUATION_PARTITIONS of the test worker
RUN = uuid.uuid4().hex[:8]
ENV = f"bad-records-{RUN}"


SEEDED: dict[str, dict[str, Any]] = {
    "plain": flag("on"),
    "costly": COSTLY,
    "versioned": flag(targeting={"if": [{"sem_ver": [{"var": "v"}, ">=", "1.2.0"]}, "on", "off"]}),
}


def nested(depth: int) -> bytes:
    return b"[" * depth + b"true" + b"]" * depth


def targeted(targeting: dict[str, Any]) -> dict[str, Any]:
    return flag(targeting=targeting)


def split(*weights: Any) -> dict[str, Any]:
    return targeted({"fractional": [{"var": "targetingKey"}, ["on", weights[0]], ["off", 1]]})


def command(**fields: Any) -> bytes:
    """A put of flag `bad` in ENV, with `fields` replaced (None removes one)."""
    base: dict[str, Any] = {
        "schema": 1,
        "change_id": f"bad-{uuid.uuid4().hex}",
        "environment": ENV,
        "flag": "bad",
        "op": "put",
        "definition": flag(),
        "actor": "pytest",
        "produced_at": 1.0,
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


def other_partition_env() -> str:
    """An environment Kafka's default partitioner puts on another partition than ENV."""
    return next(
        name
        for n in range(100)
        if partition_for(name := f"elsewhere-{n}", PARTITIONS) != partition_for(ENV, PARTITIONS)
    )


# name -> (record, dead-letter code, a regex the reason or a problem's path/message matches)
COMMANDS: dict[str, tuple[bytes, str, str]] = {
    "invalid-json": (b'{"schema": 1, "op": ', "MALFORMED", "not JSON"),
    "non-utf8": (b'{"schema": 1, "actor": "\xff\xfe"}', "MALFORMED", "UTF-8"),
    "not-an-object": (b"[1, 2]", "MALFORMED", "JSON object"),
    "empty": (b"", "MALFORMED", "empty record"),
    "wrong-types": (
        command(expected_version="3", produced_at="now", op=7, actor=["a"]),
        "MALFORMED",
        r"\$\.expected_version.*\$\.produced_at|\$\.op",
    ),
    "missing-fields": (command(change_id=None, flag=None), "MALFORMED", r"\$\.change_id"),
    "missing-definition": (command(definition=None), "MALFORMED", r"\$\.definition"),
    "bad-state-op": (command(op="state", state="ON"), "MALFORMED", r"\$\.state"),
    "deep-nesting": (
        command(definition=None).replace(b'"flag"', b'"deep": ' + nested(100) + b', "flag"'),
        "MALFORMED",
        "nested deeper than 64",
    ),
    "huge-invalid-record": (
        command(definition={"state": "ON", "variants": {"on": "\\" * 450_000}}),
        "INVALID_DEFINITION",
        r"\$\.state",
    ),
    "huge-valid-record": (
        command(definition=flag(variants={"on": "x" * 1_040_000, "off": "y"})),
        "MALFORMED",
        "-byte record, over 900000",
    ),
    "explosive-jsonlogic": (
        command(definition=targeted(DOUBLING)),
        "INVALID_DEFINITION",
        r"\$\.targeting\.reduce\[1\].*accumulator",
    ),
    "negative-weight": (command(definition=split(-50)), "INVALID_DEFINITION", r"fractional\[1\]"),
    "string-weight": (command(definition=split("50")), "INVALID_DEFINITION", r"fractional\[1\]"),
    "float-weight": (command(definition=split(0.5)), "INVALID_DEFINITION", r"fractional\[1\]"),
    "semver-garbage": (
        command(definition=targeted({"sem_ver": [{"var": "v"}, ">=", "one.two"]})),
        "INVALID_DEFINITION",
        r"sem_ver\[2\].*semantic version",
    ),
    "semver-operator": (
        command(definition=targeted({"sem_ver": [{"var": "v"}, "~~", "1.0.0"]})),
        "INVALID_DEFINITION",
        r"sem_ver\[1\]",
    ),
    "dot-dot-flag": (command(flag=".."), "MALFORMED", r"\$\.flag"),
    "slash-flag": (command(flag="a/b"), "MALFORMED", r"\$\.flag"),
    "percent-flag": (command(flag="a%2Fb"), "MALFORMED", r"\$\.flag"),
    "nul-flag": (command(flag="a\x00b"), "MALFORMED", r"\$\.flag"),
    "long-flag": (command(flag="k" * 5000), "MALFORMED", r"\$\.flag"),
    "dot-dot-environment": (command(environment=".."), "MALFORMED", r"\$\.environment"),
    "long-change-id": (command(change_id="c" * 201), "MALFORMED", r"\$\.change_id"),
    "wrong-partition": (
        command(environment=other_partition_env()),
        "MALFORMED",
        "keyed by its environment",
    ),
    "missing-flag-state": (
        command(flag="never-made", op="state", state="DISABLED"),
        "FLAG_NOT_FOUND",
        "does not exist",
    ),
}
# Unknown fields are ignored (docs/topics.md): this command is the good one after the bad.
GOOD = command(flag="good", zzz_unknown={"any": [1]}, definition=flag(zzz_kept=True))


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(f"{name}{{{wanted}}}" if labels else name) + r" ([0-9.e+]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def letters_at(worker: Worker, topic: str, offsets: set[int], partition: int) -> dict[int, Any]:
    """The dead letters of `topic`/`partition` at `offsets`, once all have been written."""

    def found() -> dict[int, Any] | None:
        letters = {
            letter["offset"]: letter
            for letter in read_topic(worker.brokers, topics_of(worker).dead_letters, idle_s=0.3)
            if letter.get("topic") == topic and letter.get("partition") == partition
        }
        return letters if offsets <= set(letters) else None

    return dict(wait_until(found, timeout_s=60, interval_s=0.2))


@pytest.fixture(scope="module")
def commands(worker: Worker) -> Iterator[dict[str, Any]]:
    """Every bad command, then the good one, produced in one batch; what came of them."""
    admin = worker.admin()
    for key, definition in SEEDED.items():
        admin.put(ENV, key, definition)
    before_flags, before_seq = admin.flags(ENV), admin.environments()[ENV]
    before = worker.metrics()
    partition = partition_for(ENV, PARTITIONS)
    records = [*(record for record, _, _ in COMMANDS.values()), GOOD]
    topic = topics_of(worker).flag_changes
    offsets = produce(worker.brokers, topic, [(ENV.encode(), r) for r in records], partition)
    wait_until(lambda: admin.flag(ENV, "good").status == 200, timeout_s=60)
    by_offset = letters_at(worker, topic, set(offsets[:-1]), partition)
    yield {
        "letters": {n: by_offset[o] for n, o in zip(COMMANDS, offsets[:-1], strict=True)},
        "before": before,
        "after": worker.metrics(),
        "before_flags": before_flags,
        "before_seq": before_seq,
    }


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_bad_command_is_a_dead_letter_with_its_code(commands: dict[str, Any], name: str) -> None:
    record, code, why = COMMANDS[name]
    letter = commands["letters"][name]
    assert letter["code"] == code, letter
    said = " ".join(
        [letter["reason"]] + [f"{p['path']} {p['message']}" for p in letter["problems"]]
    )
    assert re.search(why, said), said[:500]
    assert letter["payload_bytes"] == len(record)
    kept = letter["payload"] if letter["payload"] is not None else letter["payload_base64"]
    assert kept is not None and len(kept) <= 2 * MAX_DEAD_LETTER_PAYLOAD


def test_a_dead_letter_keeps_the_start_of_a_huge_record(commands: dict[str, Any]) -> None:
    """Was: the 1.8 MB dead letter of a 0.9 MB record was refused by the producer, the agent
    crashed, and the command vanished without a dead letter or a count."""
    letter = commands["letters"]["huge-invalid-record"]
    record = COMMANDS["huge-invalid-record"][0]
    assert letter["payload_bytes"] == len(record) > MAX_DEAD_LETTER_PAYLOAD
    assert record.decode().startswith(letter["payload"])
    assert len(json.dumps(letter)) < 1_000_000


def test_every_dead_letter_is_counted_by_code(commands: dict[str, Any]) -> None:
    for code in {code for _, code, _ in COMMANDS.values()}:
        expected = sum(1 for _, c, _ in COMMANDS.values() if c == code)
        moved = metric(commands["after"], "flagstream_dead_letters_total", code=code) - metric(
            commands["before"], "flagstream_dead_letters_total", code=code
        )
        assert moved == expected, code
    rejected = metric(commands["after"], "flagstream_flag_changes_total", outcome="rejected")
    assert rejected - metric(
        commands["before"], "flagstream_flag_changes_total", outcome="rejected"
    ) == len(COMMANDS)


def test_no_flag_changed_and_the_next_good_command_applied(
    worker: Worker, commands: dict[str, Any]
) -> None:
    admin = worker.admin()
    after = admin.flags(ENV)
    assert after.pop("good") == flag(zzz_kept=True), "unknown envelope fields are ignored"
    assert after == commands["before_flags"]
    assert admin.environments()[ENV] == commands["before_seq"] + 1
    assert "Crashed" not in worker.log_tail(400)


# -- evaluation-requests ------------------------------------------------------------------


def request(name: str, **fields: Any) -> bytes:
    base: dict[str, Any] = {
        "schema": 1,
        "request_id": f"{RUN}-{name}",
        "environment": ENV,
        "flags": ["plain"],
        "context": {"targetingKey": "u"},
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


# name -> (record, the expected error result or None, a dead letter?, a regex of its problems)
# An expected result is ("MALFORMED", path regex) for a refused request, or
# ("flags", {key: (error_code, value)}) for a request answered flag by flag.
REQUESTS: dict[str, tuple[bytes, Any, bool, str]] = {
    "invalid-json": (b'{"schema": 1, "request_id": ', None, True, "not JSON"),
    "non-utf8": (b'{"schema": 1, "request_id": "\xff"}', None, True, "not JSON"),
    "not-an-object": (b'"hello"', None, True, "JSON object"),
    "unknown-schema": (request("unknown-schema", schema=2), None, True, r"\$\.schema"),
    "missing-request-id": (
        request("x", request_id=None),
        None,
        True,
        r"\$\.request_id",
    ),
    "missing-environment": (
        request("missing-environment", environment=None),
        ("MALFORMED", r"\$\.environment"),
        True,
        r"\$\.environment",
    ),
    "wrong-types": (
        request("wrong-types", flags="plain", context=[1]),
        ("MALFORMED", r"\$\.flags"),
        True,
        r"\$\.context",
    ),
    "deep-nesting": (
        request("deep-nesting", context=None).replace(
            b'"schema"', b'"c": ' + nested(2000) + b', "schema"'
        ),
        None,
        True,
        "not JSON",
    ),
    "too-many-requests": (
        json.dumps({"schema": 1, "requests": [{}] * 10_001}).encode(),
        None,
        True,
        r"\$\.requests",
    ),
    "dot-dot-environment": (
        request("dot-dot-environment", environment=".."),
        ("MALFORMED", r"\$\.environment"),
        True,
        r"\$\.environment",
    ),
    "slash-environment": (
        request("slash-environment", environment="a/b"),
        ("MALFORMED", r"\$\.environment"),
        True,
        r"\$\.environment",
    ),
    "nul-environment": (
        request("nul-environment", environment="a\x00b"),
        ("MALFORMED", r"\$\.environment"),
        True,
        r"\$\.environment",
    ),
    "long-environment": (
        request("long-environment", environment="e" * 5000),
        ("MALFORMED", r"\$\.environment"),
        True,
        r"\$\.environment",
    ),
    "path-flag-keys": (
        request("path-flag-keys", flags=["..", "a/b", "a\x00b", "%2F", "k" * 5000]),
        (
            "flags",
            dict.fromkeys(["..", "a/b", "a\x00b", "%2F", "k" * 5000], ("FLAG_NOT_FOUND", None)),
        ),
        False,
        "",
    ),
    "explosive-context": (
        request("explosive-context", flags=["costly", "plain"], context={"s": "a"}),
        ("flags", {"costly": ("GENERAL", None), "plain": (None, True)}),
        False,
        "",
    ),
    "semver-garbage": (
        request("semver-garbage", flags=["versioned"], context={"v": "one..two-"}),
        ("flags", {"versioned": (None, False)}),
        False,
        "",
    ),
    "huge-record": (
        request("huge-record", context={"targetingKey": "u", "pad": "\\" * 450_000}),
        ("flags", {"plain": (None, True)}),
        False,
        "",
    ),
    "unknown-fields": (
        request("unknown-fields", zzz_unknown=[1], context={"targetingKey": "u", "zzz": 1}),
        ("flags", {"plain": (None, True)}),
        False,
        "",
    ),
}


@pytest.fixture(scope="module")
def requests(worker: Worker, commands: dict[str, Any]) -> dict[str, Any]:
    """Every request record produced in one batch to partition 0; their results and letters."""
    before = worker.metrics()
    records = [record for record, _, _, _ in REQUESTS.values()]
    topics = topics_of(worker)
    offsets = produce(
        worker.brokers, topics.evaluation_requests, [(b"bad", r) for r in records], partition=0
    )

    async def good() -> Any:
        async with EvaluationClient(
            worker.brokers, topics=topics, timeout_s=60, fetch_max_wait_ms=10
        ) as client:
            return await client.evaluate(ENV, {"targetingKey": "u"}, ["plain"])

    after_good = asyncio.run(good())  # answered after the bad ones: the agent goes on
    wanted = {
        o for o, (_, _, lettered, _) in zip(offsets, REQUESTS.values(), strict=True) if lettered
    }
    by_offset = letters_at(worker, topics.evaluation_requests, wanted, 0)
    results = {
        r["request_id"].removeprefix(f"{RUN}-"): r
        for r in read_topic(
            worker.brokers, topics.evaluation_results, RESULT_PARTITIONS, idle_s=0.3
        )
        if str(r.get("request_id")).startswith(f"{RUN}-")
    }
    return {
        "letters": {n: by_offset.get(o) for n, o in zip(REQUESTS, offsets, strict=True)},
        "results": results,
        "good": after_good,
        "before": before,
        "after": worker.metrics(),
    }


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_a_bad_request_gets_an_error_result_or_a_dead_letter(
    requests: dict[str, Any], name: str
) -> None:
    _, expected, lettered, why = REQUESTS[name]
    letter = requests["letters"][name]
    if lettered:
        assert letter is not None and letter["code"] == "MALFORMED", letter
        said = " ".join(
            [letter["reason"]] + [f"{p['path']} {p['message']}" for p in letter["problems"]]
        )
        assert re.search(why, said), said[:500]
    else:
        assert letter is None, letter
    result = requests["results"].get(name)
    if expected is None:
        assert result is None, "a record nobody can be answered for gets no result"
    elif expected[0] == "MALFORMED":
        assert result["flags"] == [] and result["error"]["code"] == "MALFORMED", result
        assert re.search(expected[1], json.dumps(result["error"]["problems"])), result
    else:
        assert result["error"] is None, result
        got = {f["key"]: (f["error_code"], f["value"]) for f in result["flags"]}
        assert got == expected[1]


def test_bad_requests_are_counted_and_the_agent_goes_on(
    worker: Worker, requests: dict[str, Any]
) -> None:
    assert requests["good"].flags["plain"].value is True
    letters = sum(1 for _, _, lettered, _ in REQUESTS.values() if lettered)
    answered_malformed = sum(
        1 for _, expected, _, _ in REQUESTS.values() if expected and expected[0] == "MALFORMED"
    )
    before, after = requests["before"], requests["after"]
    moved = metric(after, "flagstream_dead_letters_total", code="MALFORMED") - metric(
        before, "flagstream_dead_letters_total", code="MALFORMED"
    )
    assert moved == letters
    malformed = metric(after, "flagstream_evaluation_requests_total", outcome="malformed") - metric(
        before, "flagstream_evaluation_requests_total", outcome="malformed"
    )
    assert malformed >= answered_malformed
    assert worker.admin().flags(ENV)["plain"] == SEEDED["plain"]
