"""Faust's monitor without its once-a-second sampler.

Faust's `Monitor` (a sensor every app has) wakes every second to turn its counters into rates
(events/s, messages/s, median runtimes) for Faust's own stats pages, which a worker turns off
(`web_stats_enabled=False`), and nothing of ours reads them: our metrics are our own
(app/infra/metrics.py) and the consumer lag is read from the consumers at scrape time
(app/infra/consumer_lag.py). At saturation that wake-up is one of the loop turns an OFREP
request waits behind; idle, one more wake-up a second. The sensor itself stays (its counters
are updated per message as before); only the sampler goes.
"""

from __future__ import annotations

from faust.sensors import Monitor
from mode import Service

__all__ = ["QuietMonitor"]


class QuietMonitor(Monitor):
    """A Faust `Monitor` whose rates are never sampled (`faust.App(..., Monitor=QuietMonitor)`)."""

    @Service.task
    async def _sampler(self) -> None:
        """Nothing to sample: returns at once (mode requires a task of this name)."""
