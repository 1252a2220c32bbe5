"""Hostile records on the attribution service's sources, `exposures` and `metric-events`, as
data: each is a dead letter with a reason (or, when valid however odd, folded correctly), is
counted, and the service folds the good records that follow exactly (issue 10; the flag
topics' cases are tests/agents/test_bad_records.py).

One worker, one batch of hostile records per source, all produced to one partition under a
key that is not their targeting key, then good records: their results must equal the truth
computed from the valid records (tests/app/experiments/test_attribution.py's rules).

A record is folded whatever its Kafka key when it is on its targeting key's partition: the
`odd-*` subjects are there under another key, and count. `MISPLACED` is on another partition
than its targeting key's (murmur2, Kafka's default partitioner) and is a dead letter: there
its subject's exposures and events would not meet (a producer with another partitioner, e.g.
librdkafka's default CRC32, would silently lose attributions and could count one subject in
two partitions).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from app.control.client import AdminClient
from app.experiments.attribution import Event, Exposure
from app.experiments.exposures import to_json as exposure_json
from app.experiments.metric_events import MetricEvent
from app.experiments.metric_events import to_json as event_json
from app.experiments.sources import MAX_TEXT, MAX_TIMESTAMP, MAX_VALUE
from app.infra.topics import partition_of
from app.web.metric_events import MAX_ABS_VALUE
from app.web.sdk_batches import MAX_TEXT as SDK_MAX_TEXT
from tests.agents.test_experiments import APP_ID, TOPICS, WORKER_ENV, experiment_flag, merged
from tests.app.experiments.test_attribution import observed, same, truth
from tests.conftest import READ_TOKEN, Worker, read_topic, wait_until

ENV, EXPERIMENT = "hostile", "checkout"
HOSTILE_PARTITION = 3  # every hostile record goes here, keyed HOSTILE_KEY
HOSTILE_KEY = b"not-the-targeting-key"
EXPOSURES, METRIC_EVENTS = TOPICS.exposures, TOPICS.metric_events
PARTITIONS = 8  # FLAGSTREAM_EXPOSURE_PARTITIONS of the worker
MB = 1_000_000
Pair = tuple[str, Exposure | Event]


def placed(prefix: str, length: int = 0, partition: int = HOSTILE_PARTITION) -> str:
    """A subject named `prefix`… (padded to `length` characters) that Kafka's partitioner
    puts on `partition` (or, given -1, on any other)."""
    for n in range(10_000):
        name = f"{prefix}-{n}".ljust(length, "x")
        at = partition_of(name.encode(), PARTITIONS)
        if at == partition or (partition == -1 and at != HOSTILE_PARTITION):
            return name
    raise AssertionError("no such name")


ODD_A, ODD_B = placed("odd-a"), placed("odd-b")
ODD_C = placed("odd-c", length=MAX_TEXT)
# Valid, but on another partition than its targeting key's: a dead letter.
MISPLACED = placed("misplaced", partition=-1)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"true" + b"]" * depth


def exposure(subject: str, timestamp: float = 100.0, variant: str = "a", **fields: Any) -> bytes:
    """An exposure of `subject` as the producers write it, with `fields` replaced (None
    removes one)."""
    ident = fields.pop("exposure_id", uuid.uuid4().hex)
    value = exposure_json(
        (ENV, EXPERIMENT, variant, 1, subject, timestamp, "test", ident, EXPERIMENT)
    )
    value.update(fields)
    return orjson.dumps({k: v for k, v in value.items() if v is not None})


def event(subject: str, value: float = 1.0, metric: str = "spend", **fields: Any) -> bytes:
    """A metric event of `subject` at t=102, with `fields` replaced (None removes one)."""
    ident = fields.pop("event_id", uuid.uuid4().hex)
    record = event_json(MetricEvent(ENV, subject, metric, value, 102.0, ident))
    record.update(fields)
    return orjson.dumps({k: v for k, v in record.items() if v is not None})


def with_raw(record: bytes, name: str, raw: bytes) -> bytes:
    """`record` with the JSON of field `name` replaced by `raw` (NaN is no JSON orjson writes)."""
    start = record.index(f'"{name}":'.encode()) + len(name) + 3
    end = start + len(re.match(rb"[^,}]*", record[start:]).group())  # type: ignore[union-attr]
    return record[:start] + raw + record[end:]


# name -> (record value, a regex its dead letter's reason or problems match)
BAD_EXPOSURES: dict[str, tuple[bytes | None, str]] = {
    "not-json": (b'{"schema": 1, "exposure_id": ', "not JSON"),
    "non-utf8": (b'{"schema": 1, "variant": "\xff\xfe"}', "UTF-8"),
    "not-an-object": (b"[1, 2]", "JSON object"),
    "tombstone": (None, "not JSON"),
    "wrong-types": (
        exposure("t", flag_version="1", timestamp="now", variant=5, targeting_key=["u"]),
        r"\$\.targeting_key.*\$\.variant.*\$\.timestamp.*\$\.flag_version",
    ),
    "wrong-schema": (exposure("s", schema=2), r"\$\.schema"),
    "missing-fields": (exposure("m", targeting_key=None, experiment=None), r"\$\.experiment"),
    "nan-timestamp": (with_raw(exposure("n"), "timestamp", b"NaN"), "not JSON"),
    "infinite-timestamp": (with_raw(exposure("i"), "timestamp", b"1e400"), "not JSON"),
    "deep-nesting": (
        exposure("d").replace(b'"schema"', b'"deep": ' + nested(100) + b', "schema"'),
        "nested deeper than 64",
    ),
    "huge-targeting-key": (exposure("h" * MB), r"\$\.targeting_key"),
    "long-exposure-id": (exposure("l", exposure_id="x" * 100_000), r"\$\.exposure_id"),
    "long-targeting-key": (exposure("k" * 100_000), r"\$\.targeting_key"),
    "far-future": (exposure("f", timestamp=1e308), r"\$\.timestamp"),
    "far-past": (exposure("p", timestamp=-1e308), r"\$\.timestamp"),
    "zero-version": (exposure("z", flag_version=0), r"\$\.flag_version"),
    "misplaced": (exposure(MISPLACED), r"keyed by its targeting key"),
}
BAD_EVENTS: dict[str, tuple[bytes | None, str]] = {
    "not-json": (b'{"schema": 1, "event_id": ', "not JSON"),
    "non-utf8": (b'{"schema": 1, "metric": "\xff\xfe"}', "UTF-8"),
    "not-an-object": (b'"buy"', "JSON object"),
    "tombstone": (None, "not JSON"),
    "wrong-types": (event("t", value="9", metric=3, timestamp=None), r"\$\.metric.*\$\.timestamp"),
    "wrong-schema": (event("s", schema="1"), r"\$\.schema"),
    "missing-fields": (event("m", event_id=None), r"\$\.event_id"),
    "nan-value": (with_raw(event(ODD_A), "value", b"NaN"), "not JSON"),
    "infinite-value": (with_raw(event(ODD_A), "value", b"-Infinity"), "not JSON"),
    "deep-nesting": (
        event("d").replace(b'"schema"', b'"deep": ' + nested(100) + b', "schema"'),
        "nested deeper than 64",
    ),
    "huge-metric": (event(ODD_A, metric="m" * MB), r"\$\.metric"),
    # A subject's events are one value, logged whole: with eleven 100 KB ids it is a
    # changelog record past a Kafka broker's default 1 MB limit (the embedded one takes it).
    **{
        f"long-event-id-{n}": (event(ODD_A, event_id=f"{n}" + "e" * 100_000), r"\$\.event_id")
        for n in range(11)
    },
    # Σx² of 1e308 is inf: was folded, the totals then held a null (orjson writes inf so) and
    # the next record of the experiment crashed the fold with a TypeError.
    "value-1e308": (event(ODD_A, value=1e308), r"\$\.value"),
    "value-over-the-bound": (event(ODD_A, value=-(MAX_VALUE * 2)), r"\$\.value"),
    "far-future": (event(ODD_A, timestamp=1e308), r"\$\.timestamp"),
}

# Valid however odd: folded, in HOSTILE_PARTITION (not their targeting key's), exactly.
ODD_EXPOSURES: list[Pair] = [
    (ODD_A, Exposure(100.0, "odd-a-1", "a", 1)),
    (ODD_B, Exposure(1.0, "odd-b-1", "b", 1)),  # 1970: far past, still a time
    (ODD_B, Exposure(MAX_TIMESTAMP, "odd-b-2", "a", 1)),  # 9999: a crossover, not first
    (ODD_C, Exposure(100.0, "i" * MAX_TEXT, "a", 1)),  # the longest texts
]
ODD_EVENTS: list[Pair] = [
    (ODD_A, Event(102.0, "odd-a-neg", "spend", -3.5)),
    (ODD_A, Event(102.0, "odd-a-big", "spend", MAX_VALUE)),
    (ODD_A, Event(102.0, "odd-a-neg", "spend", -3.5)),  # the same id again: a duplicate
    (ODD_B, Event(5.0, "odd-b-buy", "buy", 1.0)),
    (ODD_B, Event(5.0, "odd-b-undeclared", "nothing", 7.0)),  # not declared: ignored
]


def odd_record(pair: Pair) -> bytes:
    subject, item = pair
    if isinstance(item, Exposure):
        return exposure(subject, item.timestamp, item.variant, exposure_id=item.exposure_id)
    return orjson.dumps(
        event_json(
            MetricEvent(ENV, subject, item.metric, item.value, item.timestamp, item.event_id)
        )
    )


def good_pairs() -> list[Pair]:
    """Subjects after the hostile records: exposures, conversions and spends, one crossover."""
    pairs: list[Pair] = []
    for n in range(40):
        subject = f"good-{n}"
        pairs.append((subject, Exposure(100.0 + n, f"{subject}-x", "ab"[n % 2], 1)))
        if n % 3 == 0:
            pairs.append((subject, Event(101.0 + n, f"{subject}-buy", "buy", 1.0)))
        if n % 4 == 0:
            pairs.append((subject, Event(102.0 + n, f"{subject}-spend", "spend", n * 1.25)))
    pairs.append(("good-1", Exposure(500.0, "good-1-later", "a", 1)))  # a crossover
    return pairs


async def _produce(
    brokers: str, topic: str, records: list[tuple[bytes, bytes | None, int | None]]
) -> list[int]:
    """Send records (key, value, partition) with a producer that takes 1 MB records."""
    producer = AIOKafkaProducer(bootstrap_servers=brokers, max_request_size=4 * MB, linger_ms=20)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, partition=partition)
            for key, value, partition in records
        ]
        return [metadata.offset for metadata in await asyncio.gather(*futures)]
    finally:
        await producer.stop()


def produce(
    brokers: str, topic: str, records: list[tuple[bytes, bytes | None, int | None]]
) -> list[int]:
    return asyncio.run(_produce(brokers, topic, records))


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(f"{name}{{{wanted}}}" if labels else name) + r" ([0-9.e+]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def hostile(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A worker fed every hostile record, then good ones; what came of them."""
    worker = Worker(
        broker, tmp_path_factory.mktemp("hostile") / "data", APP_ID, **WORKER_ENV
    ).start()
    try:
        worker.admin().put(ENV, EXPERIMENT, experiment_flag())
        before = worker.metrics()
        sent: dict[str, dict[str, int]] = {}
        for topic, bad, odd in (
            (EXPOSURES, BAD_EXPOSURES, ODD_EXPOSURES),
            (METRIC_EVENTS, BAD_EVENTS, ODD_EVENTS),
        ):
            values = [odd_record(pair) for pair in odd if pair[0] == ODD_A]
            values += [value for value, _ in bad.values()]  # the bad between the odd ones
            values += [odd_record(pair) for pair in odd if pair[0] != ODD_A]
            offsets = produce(
                broker, topic, [(HOSTILE_KEY, value, HOSTILE_PARTITION) for value in values]
            )
            start = sum(1 for pair in odd if pair[0] == ODD_A)
            sent[topic] = dict(zip(bad, offsets[start : start + len(bad)], strict=True))
        good = good_pairs()
        for topic, kind in ((EXPOSURES, Exposure), (METRIC_EVENTS, Event)):
            produce(
                broker,
                topic,
                [
                    (s.encode(), odd_record((s, item)), None)
                    for s, item in good
                    if isinstance(item, kind)
                ],
            )
        valid = [*ODD_EXPOSURES, *ODD_EVENTS, *good]
        wait_until(
            lambda: same(observed(merged(broker, ENV, EXPERIMENT)), truth(valid)),
            timeout_s=90,
            interval_s=0.5,
        )
        letters = letters_of(broker, {(t, o) for t, by in sent.items() for o in by.values()})
        yield {
            "worker": worker,
            "letters": {
                (topic, name): letters[(topic, offset)]
                for topic, by_name in sent.items()
                for name, offset in by_name.items()
            },
            "before": before,
            "after": worker.metrics(),
            "valid": valid,
        }
    finally:
        worker.stop()


def letters_of(broker: str, wanted: set[tuple[str, int]]) -> dict[tuple[str, int], Any]:
    """The dead letters of HOSTILE_PARTITION at (topic, offset), once all are written."""

    def found() -> dict[tuple[str, int], Any] | None:
        letters = {
            (letter["topic"], letter["offset"]): letter
            for letter in read_topic(broker, TOPICS.dead_letters, idle_s=0.3)
            if letter.get("partition") == HOSTILE_PARTITION
        }
        return letters if wanted <= set(letters) else None

    return dict(wait_until(found, timeout_s=60, interval_s=0.2))


CASES = [(EXPOSURES, name) for name in BAD_EXPOSURES] + [
    (METRIC_EVENTS, name) for name in BAD_EVENTS
]


@pytest.mark.parametrize(("topic", "name"), CASES, ids=[f"{t}-{n}" for t, n in CASES])
def test_a_hostile_record_is_a_dead_letter_with_its_reason(
    hostile: dict[str, Any], topic: str, name: str
) -> None:
    value, why = (BAD_EXPOSURES if topic == EXPOSURES else BAD_EVENTS)[name]
    letter = hostile["letters"][(topic, name)]
    assert letter["code"] == "MALFORMED", letter
    said = " ".join(
        [letter["reason"]] + [f"{p['path']} {p['message']}" for p in letter["problems"]]
    )
    assert re.search(why, said), said[:500]
    assert letter["payload_bytes"] == len(value or b"")
    assert len(json.dumps(letter)) < 1_000_000  # a dead letter of a 1 MB record fits Kafka


def test_every_hostile_record_is_counted(hostile: dict[str, Any]) -> None:
    before, after = hostile["before"], hostile["after"]
    # The label names the source by its role, the same in every deployment (not the topic).
    for source, bad in (("exposures", BAD_EXPOSURES), ("metric-events", BAD_EVENTS)):
        name = "flagstream_attribution_records_total"
        moved = metric(after, name, outcome="malformed", source=source) - metric(
            before, name, outcome="malformed", source=source
        )
        assert moved == len(bad), source
    letters = metric(after, "flagstream_dead_letters_total", code="MALFORMED") - metric(
        before, "flagstream_dead_letters_total", code="MALFORMED"
    )
    assert letters == len(BAD_EXPOSURES) + len(BAD_EVENTS)


def test_the_records_around_them_are_folded_exactly_and_nothing_crashed(
    broker: str, hostile: dict[str, Any]
) -> None:
    """The odd but valid records count in the partition they arrived in; the good ones that
    follow are folded exactly (the fixture waited for it); the log has no traceback."""
    assert same(observed(merged(broker, ENV, EXPERIMENT)), truth(hostile["valid"]))
    log = hostile["worker"].log_path.read_text(errors="replace")
    assert "Traceback" not in log and "Crashed" not in log, hostile["worker"].log_tail()


def test_the_results_view_is_finite_and_counts_every_valid_subject(
    hostile: dict[str, Any],
) -> None:
    worker: Worker = hostile["worker"]
    path = f"/api/v1/environments/{ENV}/experiments/{EXPERIMENT}/results"
    reply = AdminClient(worker.url, READ_TOKEN).request("GET", path)
    assert reply.status == 200, reply.body
    want = truth(hostile["valid"])
    assert reply.body["subjects"] == sum(n for n, *_ in want.values())
    text = json.dumps(reply.body, allow_nan=False)  # raises on NaN or infinity
    spend = next(m for m in reply.body["metrics"] if m["metric"] == "spend")
    assert all(v["sum_squares"] is not None for v in spend["variants"]), text[:500]


def test_the_bounds_are_the_http_apis() -> None:
    """A record a producer writes to Kafka directly is held to what the SDK routes accept."""
    assert MAX_VALUE == MAX_ABS_VALUE
    assert MAX_TEXT == SDK_MAX_TEXT
