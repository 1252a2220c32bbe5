"""Liveness and readiness of one worker, and its Prometheus metrics on their own port.

Readiness is for evaluation traffic: a worker whose broker is unreachable stays ready (200)
and serves its last known flags, saying so in the body (`"broker": "unreachable"`), while
writes answer 503 BROKER_UNAVAILABLE. `flagstream_broker_reachable` carries the same.

`/metrics` is not on the API port: it names every evaluated flag and variant, which the API
protects. `MetricsSite` serves it on FLAGSTREAM_METRICS_HOST:FLAGSTREAM_METRICS_PORT.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from faust.web import View

from app.main import broker_watch, faust_app, flag_table, replication, settings
from app.web.metrics_site import MetricsSite
from app.web.responses import ok
from tables.broker_watch import BrokerState

SERVING = {
    BrokerState.REACHABLE: "current flags; writes accepted",
    BrokerState.UNREACHABLE: "serving last known flags, broker unreachable; writes refused (503)",
    BrokerState.RECOVERING: "broker back, checking its log; writes refused (503) until done",
}


def broker() -> dict[str, Any]:
    """The broker's state as this worker last saw it, for both health bodies."""
    state = broker_watch.broker_state
    return {
        "broker": state.value,
        "writable": broker_watch.writable.is_set(),
        "serving": SERVING[state],
    }


@faust_app.page("/healthz")
class Health(View):
    async def get(self, request: web.Request) -> web.Response:
        return ok({"status": "ok", **broker()})


@faust_app.page("/readyz")
class Ready(View):
    """Ready once the flag table has read its start fences: it then serves no stale flag.

    A broker lost later does not make the worker unready: its flags are the last the log
    held, and evaluations keep their answers; the body says the broker is unreachable.
    """

    async def get(self, request: web.Request) -> web.Response:
        if not replication.ready.is_set():
            return ok({"status": "recovering", **broker()}, status=503)
        return ok({"status": "ready", "environments": len(flag_table.environments()), **broker()})


# Faust starts extra services with the app and accepts an instance as well as a class.
faust_app.service(MetricsSite(settings.metrics_host, settings.metrics_port))  # type: ignore[arg-type]
