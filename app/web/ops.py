"""Liveness and readiness of one worker, and its Prometheus metrics on their own port.

`/metrics` is not on the API port: it names every evaluated flag and variant, which the API
protects. `MetricsSite` serves it on FLAGSTREAM_METRICS_HOST:FLAGSTREAM_METRICS_PORT.
"""

from __future__ import annotations

from aiohttp import web
from faust.web import View

from app.main import faust_app, flag_table, replication, settings
from app.web.metrics_site import MetricsSite
from app.web.responses import ok


@faust_app.page("/healthz")
class Health(View):
    async def get(self, request: web.Request) -> web.Response:
        return ok({"status": "ok"})


@faust_app.page("/readyz")
class Ready(View):
    """Ready once the flag table has read its start fences: it then serves no stale flag."""

    async def get(self, request: web.Request) -> web.Response:
        if not replication.ready.is_set():
            return ok({"status": "recovering"}, status=503)
        return ok({"status": "ready", "environments": len(flag_table.environments())})


# Faust starts extra services with the app and accepts an instance as well as a class.
faust_app.service(MetricsSite(settings.metrics_host, settings.metrics_port))  # type: ignore[arg-type]
