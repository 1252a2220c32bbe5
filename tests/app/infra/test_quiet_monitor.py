"""Faust's monitor keeps counting but no longer wakes every second to sample rates."""

from __future__ import annotations

import asyncio

from faust.sensors import Monitor

from app.infra.quiet_monitor import QuietMonitor
from app.infra.settings import Settings
from app.main import faust_app_for

# Faust's sampler runs every 1.0 s: a window of 1.5 s holds at least one of its turns.
WINDOW_S = 1.5


async def rate_after_a_window(monitor: Monitor) -> int:
    """`messages_s` once a sampler turn had 10 messages to turn into a rate."""
    await monitor.start()
    try:
        for _ in range(3):  # the sampler's task starts and reads the counter (0) first
            await asyncio.sleep(0)
        monitor.messages_received_total += 10
        await asyncio.sleep(WINDOW_S)  # the absence of a sample needs a window, not a condition
        return monitor.messages_s
    finally:
        await monitor.stop()


def test_faust_s_monitor_samples_every_second() -> None:
    """The reference: the stock monitor turns the counter into a rate within the window."""
    assert asyncio.run(rate_after_a_window(Monitor())) == 10


def test_the_quiet_monitor_never_samples() -> None:
    assert asyncio.run(rate_after_a_window(QuietMonitor())) == 0


def test_a_worker_s_faust_app_has_the_quiet_monitor() -> None:
    """Seen failing (a plain `Monitor`) without `Monitor=QuietMonitor` in app/main.py."""
    app = faust_app_for(Settings.from_env())
    assert type(app.monitor) is QuietMonitor
