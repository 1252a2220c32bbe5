"""Metric events posted by SDKs: checked per item against the metrics experiment flags
declare, produced once each to `metric-events`, co-partitioned with exposures, answered
only once the broker has them."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import ConsumerRecord

from app.control.client import AdminClient
from app.infra.topics import partition_of
from tests.conftest import SDK_KEY, Worker, read_records, wait_until
from tests.worker_topics import topics_of

PARTITIONS = 8  # the default FLAGSTREAM_EXPOSURE_PARTITIONS: both topics
POST = "/api/v1/metric-events"


def experiment(**metrics: str) -> dict[str, Any]:
    """An experiment flag declaring `metrics` (key -> declaration)."""
    return {
        "state": "ENABLED",
        "variants": {"control": "a", "treatment": "b"},
        "defaultVariant": "control",
        "targeting": {"fractional": [["control", 50], ["treatment", 50]]},
        "metadata": {
            "experiment": True,
            "control": "control",
            **{f"metric.{key}": kind for key, kind in metrics.items()},
        },
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def records_of(
    broker: str, topic: str, targeting_keys: set[str], idle_s: float = 0.3
) -> list[ConsumerRecord[bytes, bytes]]:
    found = read_records(broker, topic, PARTITIONS, idle_s=idle_s)
    return [r for r in found if json.loads(r.value)["targeting_key"] in targeting_keys]


def counter(worker: Worker, outcome: str) -> float:
    pattern = rf'^flagstream_metric_events_total\{{outcome="{outcome}"\}} (\S+)$'
    match = re.search(pattern, worker.metrics(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_good_items_are_produced_and_bad_items_reported_by_index(
    worker: Worker, broker: str
) -> None:
    buy, spend = unique("buy"), unique("spend")
    worker.admin().put("development", unique("exp"), experiment(**{buy: "conversion"}))
    worker.admin().put("development", unique("exp"), experiment(**{spend: "mean"}))
    worker.admin().put("development", unique("plain"), {**experiment(), "metadata": {}})
    a, b, c = unique("u"), unique("u"), unique("u")
    items: list[Any] = [
        {"targeting_key": a, "metric": buy, "event_id": "sdk-event-1"},  # value 1 by default
        {"targeting_key": b, "metric": buy, "value": True, "timestamp": 1795600000.5},
        {"targeting_key": c, "metric": spend, "value": 12.5},
        {"targeting_key": a, "metric": spend, "value": -3},
        {"targeting_key": a, "metric": unique("undeclared"), "value": 1},  # 4
        {"targeting_key": a, "metric": buy, "value": 2},  # 5: a conversion is 1
        {"targeting_key": a, "metric": buy, "value": 0},  # 6
        {"targeting_key": a, "metric": spend, "value": "12"},  # 7
        {"targeting_key": a, "metric": spend, "value": 1e300},  # 8: beyond 1e15
        {"targeting_key": a, "metric": spend},  # 9: a mean needs a value
        {"metric": buy},  # 10
        {"targeting_key": "x" * 257, "metric": buy},  # 11
        {"targeting_key": a, "metric": buy, "timestamp": time.time() + 2 * 86_400},  # 12
        {"targeting_key": a, "metric": buy, "event_id": 7},  # 13
        "not an object",  # 14
        {"targeting_key": a, "metric": spend, "value": False},  # 15: a bool is no mean value
    ]
    produced_before, rejected_before = counter(worker, "produced"), counter(worker, "rejected")
    reply = AdminClient(worker.url, SDK_KEY).request("POST", POST, {"events": items})
    assert reply.status == 202, reply.body
    assert reply.body["accepted"] == 4
    assert {r["index"]: [p["path"] for p in r["problems"]] for r in reply.body["rejected"]} == {
        4: ["$.events[4].metric"],
        5: ["$.events[5].value"],
        6: ["$.events[6].value"],
        7: ["$.events[7].value"],
        8: ["$.events[8].value"],
        9: ["$.events[9].value"],
        10: ["$.events[10].targeting_key"],
        11: ["$.events[11].targeting_key"],
        12: ["$.events[12].timestamp"],
        13: ["$.events[13].event_id"],
        14: ["$.events[14]"],
        15: ["$.events[15].value"],
    }
    undeclared = reply.body["rejected"][0]["problems"][0]["message"]
    assert items[4]["metric"] in undeclared, "the rejection names the metric"

    # 202 came after the broker's ack: the records are readable at once, no waiting.
    records = records_of(broker, topics_of(worker).metric_events, {a, b, c}, idle_s=1.0)
    events = [json.loads(r.value) for r in records]
    assert len(events) == 4
    for record, event in zip(records, events, strict=True):
        assert set(event) == {
            "schema",
            "event_id",
            "environment",
            "targeting_key",
            "metric",
            "value",
            "timestamp",
        }
        assert (event["schema"], event["environment"]) == (1, "development")
        assert record.key == event["targeting_key"].encode()
        assert record.partition == partition_of(record.key, PARTITIONS)
        assert record.timestamp == int(event["timestamp"] * 1000)
    by_id = {e["event_id"]: e for e in events}
    assert by_id["sdk-event-1"]["value"] == 1 and by_id["sdk-event-1"]["metric"] == buy
    assert len(by_id) == 4, "every event has its own id"
    values = sorted((e["targeting_key"], e["metric"], e["value"]) for e in events)
    assert values == sorted([(a, buy, 1), (b, buy, 1), (c, spend, 12.5), (a, spend, -3)])
    assert next(e for e in events if e["targeting_key"] == b)["timestamp"] == 1795600000.5

    assert wait_until(lambda: counter(worker, "produced") == produced_before + 4)
    assert counter(worker, "rejected") == rejected_before + 12


def test_a_subjects_events_and_exposures_share_a_partition_number(
    worker: Worker, broker: str
) -> None:
    flag, metric = unique("exp"), unique("buy")
    worker.admin().put("development", flag, experiment(**{metric: "conversion"}))
    subjects = {unique("s") for _ in range(24)}
    sdk = AdminClient(worker.url, SDK_KEY)
    events = [{"targeting_key": s, "metric": metric} for s in subjects]
    exposures = [{"flag": flag, "variant": "treatment", "targeting_key": s} for s in subjects]
    assert sdk.request("POST", POST, {"events": events}).body["accepted"] == 24
    assert sdk.request("POST", "/api/v1/exposures", {"exposures": exposures}).status == 202
    event_partitions = {
        r.key: r.partition for r in records_of(broker, topics_of(worker).metric_events, subjects)
    }
    exposure_partitions = {
        r.key: r.partition for r in records_of(broker, topics_of(worker).exposures, subjects)
    }
    assert len(event_partitions) == 24
    assert event_partitions == exposure_partitions
    assert len(set(event_partitions.values())) > 1, "24 subjects spread over partitions"


def test_metric_events_need_an_sdk_key_and_a_list(worker: Worker) -> None:
    body = {"events": [{"targeting_key": "u", "metric": "m"}]}
    assert AdminClient(worker.url, "").request("POST", POST, body).status == 401
    assert AdminClient(worker.url, "wrong-sdk-key").request("POST", POST, body).status == 401
    client = AdminClient(worker.url, SDK_KEY)
    for bad in ({"events": []}, {"events": {}}, [], {"events": [{}] * 1001}, {"exposures": [{}]}):
        reply = client.request("POST", POST, bad)
        assert reply.status == 400 and '{"events": [...]}' in reply.body["error"]["message"]


def test_a_flag_whose_metric_declarations_do_not_parse_is_refused(worker: Worker) -> None:
    definition = experiment(ok="conversion", revenue="sum")
    definition["metadata"]["metric.latency"] = "mean guardrail sideways"
    reply = worker.admin().request(
        "PUT", f"/api/v1/environments/development/flags/{unique('bad-exp')}", definition
    )
    assert reply.status == 422, reply.body
    assert [p["path"] for p in reply.body["error"]["problems"]] == [
        '$.metadata["metric.latency"]',
        '$.metadata["metric.revenue"]',
    ]


def test_202_waits_for_the_broker_and_a_full_buffer_is_503(
    worker: Worker, broker: str, cluster: list[Worker], tmp_path: Path
) -> None:
    """A worker flushing every 3 s: its 202 comes once the events are on the broker (not
    when they are buffered); more events than its buffer holds are refused, to send again.
    Last in the module: the second worker joins the shared worker's groups."""
    metric = unique("buy")
    worker.admin().put("development", unique("exp"), experiment(**{metric: "conversion"}))
    slow = Worker(
        broker,
        tmp_path / "data",
        "flagstream-test",
        FLAGSTREAM_EXPOSURE_FLUSH_MS="3000",
        FLAGSTREAM_EXPOSURE_BUFFER="5",
    )
    cluster.append(slow)
    slow.start()
    sdk = AdminClient(slow.url, SDK_KEY)
    events = [{"targeting_key": unique("u"), "metric": metric} for _ in range(6)]
    wait_until(lambda: sdk.request("POST", POST, {"events": events[:1]}).status == 202, 20)

    reply = sdk.request("POST", POST, {"events": events[1:3]})
    assert reply.status == 202 and reply.body["accepted"] == 2
    keys = {event["targeting_key"] for event in events[1:3]}
    on_the_broker = records_of(
        broker, topics_of(worker).metric_events, keys, idle_s=0.2
    )  # read at once
    assert len(on_the_broker) == 2, "answered before the broker had them"

    full = sdk.request("POST", POST, {"events": events})
    assert full.status == 503 and full.headers.get("Retry-After") == "1", full.body
    assert "send them again" in full.body["error"]["message"]
    assert re.search(
        r'^flagstream_metric_events_total\{outcome="dropped"\} 6\.0$', slow.metrics(), re.M
    )
