"""Liveness, readiness and Prometheus metrics of one worker."""

from __future__ import annotations

from aiohttp import web
from faust.web import View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.main import faust_app, flag_table, replication
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


@faust_app.page("/metrics")
class Metrics(View):
    async def get(self, request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest())
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response
