"""Prometheus metrics on their own port, apart from the HTTP API.

The metrics name every evaluated flag key and variant (`app.evaluation.stats`), which the API
shows only to a credential, so they are not on the API port: this site serves `/metrics` on
FLAGSTREAM_METRICS_HOST:FLAGSTREAM_METRICS_PORT, the loopback unless a deployment says otherwise.

It runs on the worker's event loop rather than in prometheus_client's server thread: the
`EvaluationStats` collector reads dicts the evaluation path writes, which is only safe from the
thread that writes them.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from mode import Service
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["MetricsSite"]


class MetricsSite(Service):
    """`GET /metrics` of `registry` on `host:port`, started and stopped with the worker."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry = REGISTRY, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.host, self.port, self.registry = host, port, registry
        self._runner: web.AppRunner | None = None

    async def on_start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(
                f"cannot serve metrics on {self.host}:{self.port} ({exc.strerror}): "
                "set FLAGSTREAM_METRICS_HOST / FLAGSTREAM_METRICS_PORT"
            ) from exc
        self.log.info("Prometheus metrics on http://%s:%s/metrics", self.host, self.port)

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def metrics(self, request: web.Request) -> web.Response:
        """The text format Prometheus asks for (`Accept`), as prometheus_client's server does."""
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self.registry), headers={"Content-Type": content_type})
