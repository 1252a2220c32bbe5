"""Liveness and readiness of one worker, and its Prometheus metrics on their own port.

Readiness is for evaluation traffic: a worker whose broker is unreachable stays ready (200)
and serves its last known flags, saying so in the body (`"broker": "unreachable"`), while
writes answer 503 BROKER_UNAVAILABLE. `flagstream_broker_reachable` carries the same.

`/metrics` is not on the API port: it names every evaluated flag and variant, which the API
protects. `app.web.metrics_site.MetricsSite` serves it on FLAGSTREAM_METRICS_HOST:PORT.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from app.web.responses import ok
from tables.broker_watch import BrokerState, BrokerWatch
from tables.flags import FlagTable
from tables.replication import FlagReplication

__all__ = ["HealthApi"]

SERVING = {
    BrokerState.REACHABLE: "current flags; writes accepted",
    BrokerState.UNREACHABLE: "serving last known flags, broker unreachable; writes refused (503)",
    BrokerState.RECOVERING: "broker back, checking its log; writes refused (503) until done",
}


class HealthApi:
    """`/healthz` (alive) and `/readyz` (ready for evaluation traffic)."""

    def __init__(
        self, flags: FlagTable, replication: FlagReplication, broker_watch: BrokerWatch
    ) -> None:
        self.flags = flags
        self.replication = replication
        self.broker_watch = broker_watch

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", self.health),
            web.get("/readyz", self.ready),
        ]

    def broker(self) -> dict[str, Any]:
        """The broker's state as this worker last saw it, for both health bodies."""
        state = self.broker_watch.broker_state
        return {
            "broker": state.value,
            "writable": self.broker_watch.writable.is_set(),
            "serving": SERVING[state],
        }

    async def health(self, request: web.Request) -> web.Response:
        return ok({"status": "ok", **self.broker()})

    async def ready(self, request: web.Request) -> web.Response:
        """Ready once the flag table has read its start fences: it then serves no stale flag.
        Flags compile in the background after that (`LiveFlags`, 1 ms per loop turn); a
        request for a flag not compiled yet compiles only that flag.

        A broker lost later does not make the worker unready: its flags are the last the log
        held, and evaluations keep their answers; the body says the broker is unreachable.
        """
        if not self.replication.ready.is_set():
            return ok({"status": "recovering", **self.broker()}, status=503)
        environments = len(self.flags.environments())
        return ok({"status": "ready", "environments": environments, **self.broker()})
