"""A worker still reading its changelog says so, instead of calling existing flags missing."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from app.control.client import AdminClient
from app.infra.topics import FLAGS_CHANGELOG
from tables.replication import FENCE_KEY
from tests.conftest import ADMIN_TOKEN, SDK_KEY, Worker, flag, produce

BACKLOG = 200_000  # changelog records a fresh worker must read before it is ready


def test_evaluations_wait_for_recovery_and_say_so(broker: str, tmp_path: Path) -> None:
    first = Worker(broker, tmp_path / "first", "recovering").start()
    first.admin().put("development", "kept", flag(default="on"))
    first.stop()
    for partition in range(4):
        produce(broker, FLAGS_CHANGELOG, [(FENCE_KEY, b"x")] * (BACKLOG // 4), partition)

    fresh = Worker(broker, tmp_path / "fresh", "recovering")
    fresh.launch()
    try:
        sdk = AdminClient(fresh.url, SDK_KEY)
        while True:
            try:
                urllib.request.urlopen(fresh.url + "/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        assert AdminClient(fresh.url, ADMIN_TOKEN).request("GET", "/readyz").status == 503
        # Asked while the table is empty: the answer waits for recovery (then 200) or, after
        # its bounded wait, says the worker is recovering (500); never FLAG_NOT_FOUND.
        early = sdk.request("POST", "/ofrep/v1/evaluate/flags/kept", {"context": {}})
        if early.status == 500:
            assert "recovering" in early.body["errorDetails"]
        else:
            assert (early.status, early.body.get("value")) == (200, True), early.body
        fresh.wait_ready(120)
        late = sdk.request("POST", "/ofrep/v1/evaluate/flags/kept", {"context": {}})
        assert (late.status, late.body["value"]) == (200, True)
    finally:
        fresh.stop()
