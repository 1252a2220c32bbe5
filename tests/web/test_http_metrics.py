"""`response_counter` counts every answer of an aiohttp app, raised ones and 500s included.

A real aiohttp server on a socket, with views that answer, raise an HTTP error or fail; no
view counts anything itself. (Over a worker: tests/web/test_admin.py.)
"""

from __future__ import annotations

import asyncio
import http.client
import re
import socket

from aiohttp import web
from prometheus_client import CollectorRegistry

from app.infra.metrics import Metrics
from app.web.http_metrics import response_counter
from tests.conftest import ADMIN_TOKEN, Worker

REGISTRY = CollectorRegistry()
METRICS = Metrics(REGISTRY)


def counted(route: str, status: int) -> float:
    value = REGISTRY.get_sample_value(
        "flagstream_http_requests_total", {"route": route, "status": str(status)}
    )
    return value or 0.0


async def answers(request: web.Request) -> web.Response:
    return web.Response(status=201)


async def raises_http_error(request: web.Request) -> web.Response:
    raise web.HTTPConflict()


async def fails(request: web.Request) -> web.Response:
    raise RecursionError("a bug")


def statuses_of(paths: list[tuple[str, str]]) -> list[int]:
    """Serve the app on a free port, request each (method, path), return the statuses."""

    async def run() -> list[int]:
        app = web.Application(middlewares=[response_counter(METRICS)])
        app.router.add_get("/healthz", answers)  # a named route (ROUTE_NAMES)
        app.router.add_get("/conflict/{id}", raises_http_error)
        app.router.add_get("/readyz", fails)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            return [await asyncio.to_thread(status_of, port, m, p) for m, p in paths]
        finally:
            await runner.cleanup()

    return asyncio.run(run())


def status_of(port: int, method: str, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_every_answer_is_counted_once_by_route_name_and_status() -> None:
    expected = {
        ("healthz", 201): 2,
        ("/conflict/{id}", 409): 2,  # a route ROUTE_NAMES does not name: its template
        ("readyz", 500): 1,  # an unhandled exception
        ("unmatched", 404): 1,
        ("unmatched", 405): 1,
    }
    before = {key: counted(*key) for key in expected}
    statuses = statuses_of(
        [
            ("GET", "/healthz"),
            ("GET", "/healthz"),
            ("GET", "/conflict/1"),
            ("GET", "/conflict/2"),
            ("GET", "/readyz"),
            ("GET", "/no-such-route"),
            ("POST", "/healthz"),
        ]
    )
    assert statuses == [201, 201, 409, 409, 500, 404, 405]
    assert {key: counted(*key) - before[key] for key in expected} == expected


def test_a_body_that_breaks_its_framing_is_counted_once_as_the_400_it_gets(
    worker: Worker,
) -> None:
    """A body that is not the gzip it claims fails while its view reads it; the connection
    handler answers 400: counted so, once, under the route that read it (it was counted 500
    by the middleware and 400 as `unparsed`)."""

    def samples() -> dict[tuple[str, str], float]:
        found = re.findall(
            r'flagstream_http_requests_total\{route="(\w+)",status="(\d+)"\} (\S+)',
            worker.metrics(),
        )
        return {(route, status): float(value) for route, status, value in found}

    before = samples()
    with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as client:
        client.sendall(
            b"PUT /api/v1/environments/framing/flags/f HTTP/1.1\r\nHost: w\r\n"
            b"Authorization: Bearer "
            + ADMIN_TOKEN.encode()
            + b"\r\n"
            b"Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: 12\r\n\r\nnot gzip at all"[:-3]
        )
        assert client.recv(65536).startswith(b"HTTP/1.1 400 ")
    after = samples()
    moved = {
        key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key)
    }
    assert moved == {("flag", "400"): 1.0}, moved
