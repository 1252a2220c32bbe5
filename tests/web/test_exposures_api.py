"""Exposures posted by SDKs that evaluate locally: checked per item, produced once each."""

from __future__ import annotations

import time

from app.control.client import AdminClient
from tests.conftest import EXPERIMENT, SDK_KEY, Worker, read_topic, wait_until
from tests.worker_topics import topics_of


def test_good_items_are_produced_and_bad_items_reported_by_index(
    worker: Worker, broker: str
) -> None:
    worker.admin().put("development", "posted-exp", EXPERIMENT)
    items = [
        {
            "flag": "posted-exp",
            "variant": "treatment",
            "targeting_key": "u1",
            "exposure_id": "sdk-1",
        },
        {"flag": "posted-exp", "variant": "nope", "targeting_key": "u2"},
        {"flag": "missing-flag", "variant": "control", "targeting_key": "u3"},
        {"flag": "posted-exp", "variant": "control"},
        "not an object",
        {
            "flag": "posted-exp",
            "variant": "control",
            "targeting_key": "u4",
            "timestamp": 1795600000.5,
        },
    ]
    reply = AdminClient(worker.url, SDK_KEY).request(
        "POST", "/api/v1/exposures", {"exposures": items}
    )
    assert reply.status == 202
    assert reply.body["accepted"] == 2
    assert {r["index"]: r["problems"][0]["path"] for r in reply.body["rejected"]} == {
        1: "$.exposures[1].variant",
        2: "$.exposures[2].flag",
        3: "$.exposures[3].targeting_key",
        4: "$.exposures[4]",
    }

    def posted() -> list[dict[str, object]]:
        found = read_topic(broker, topics_of(worker).exposures, partitions=8, idle_s=0.3)
        return [e for e in found if e.get("flag") == "posted-exp" and e.get("source") == "sdk"]

    exposures = wait_until(lambda: len(posted()) == 2 and posted())
    by_key = {e["targeting_key"]: e for e in exposures}
    assert by_key["u1"]["exposure_id"] == "sdk-1" and by_key["u1"]["variant"] == "treatment"
    assert by_key["u4"]["timestamp"] == 1795600000.5 and by_key["u4"]["flag_version"] == 1
    assert by_key["u4"]["environment"] == "development"


def test_exposures_need_an_sdk_key_and_a_list(worker: Worker) -> None:
    assert (
        AdminClient(worker.url, "").request("POST", "/api/v1/exposures", {"exposures": []}).status
        == 401
    )
    client = AdminClient(worker.url, SDK_KEY)
    for body in ({"exposures": []}, {"exposures": {}}, [], {"exposures": [{}] * 1001}):
        assert client.request("POST", "/api/v1/exposures", body).status == 400


def test_a_timestamp_out_of_range_is_rejected_and_the_worker_keeps_going(
    worker: Worker, broker: str
) -> None:
    """1e308 seconds was accepted, and the exposure producer's int(ms) crashed the worker."""
    worker.admin().put("development", "far-future", EXPERIMENT)
    client = AdminClient(worker.url, SDK_KEY)
    items = [
        {"flag": "far-future", "variant": "control", "targeting_key": "f1", "timestamp": t}
        for t in (1e308, time.time() + 2 * 86_400, -1.0)
    ]
    reply = client.request("POST", "/api/v1/exposures", {"exposures": items})
    assert reply.status == 202 and reply.body["accepted"] == 0
    assert [r["problems"][0]["path"] for r in reply.body["rejected"]] == [
        f"$.exposures[{index}].timestamp" for index in range(3)
    ]
    good = {"flag": "far-future", "variant": "control", "targeting_key": "f2"}
    assert client.request("POST", "/api/v1/exposures", {"exposures": [good]}).status == 202

    def produced() -> bool:
        found = read_topic(broker, topics_of(worker).exposures, partitions=8, idle_s=0.3)
        return any(e.get("targeting_key") == "f2" for e in found)

    wait_until(produced)
    assert worker.admin().request("GET", "/readyz").status == 200
