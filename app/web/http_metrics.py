"""`flagstream_http_requests_total{route,status}` for every answer aiohttp gives.

One middleware instead of a `counted(...)` call in each view, so no answer escapes the count:
errors raised by aiohttp (404 for no route, 405), and unhandled exceptions, which aiohttp
turns into a 500 after the view is gone. `route` is a bounded name (the route's name in
ROUTE_NAMES, else its path template, `unmatched` when no route matched), never the URL.
The OFREP fast path (`app.web.fast_path`) answers in front of aiohttp and counts its own.
"""

from __future__ import annotations

import asyncio
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from app.infra.metrics import Metrics
from app.web.admin_answers import API
from app.web.fast_path import parse_error_reason

__all__ = ["ROUTE_NAMES", "response_counter", "route_name"]

# Route names by path template: the label values dashboards already use.
ROUTE_NAMES: Final = {
    API: "environments",
    API + "/{env}/flags": "flags",
    API + "/{env}/flags/{key}": "flag",
    API + "/{env}/flags/{key}/history": "history",
    API + "/{env}/flags/{key}/state": "state",
    API + "/{env}/stream": "stream",
    API + "/{env}/evaluate": "evaluate",
    "/api/v1/exposures": "exposures",
    "/api/v1/metric-events": "metric_events",
    "/ofrep/v1/evaluate/flags/{key}": "ofrep",  # the fast path's label too
    "/ofrep/v1/evaluate/flags": "ofrep_bulk",
    "/ofrep/v1/events": "ofrep_events",
    "/healthz": "healthz",
    "/readyz": "readyz",
    "/metrics": "metrics",
}
UNMATCHED: Final = "unmatched"


def route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    if resource is None:
        return UNMATCHED
    return ROUTE_NAMES.get(resource.canonical, resource.canonical)


def response_counter(metrics: Metrics) -> Middleware:
    """The middleware counting into `metrics.http_requests`."""
    requests = metrics.http_requests

    def count(route: str, status: int) -> None:
        requests.labels(route, str(status)).inc()

    @web.middleware
    async def count_responses(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count the answer to `request`, whatever the view returned or raised.

        A cancelled handler (the client went away) got no answer and is not counted.
        """
        route = route_name(request)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            count(route, exc.status)
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A body that breaks its own framing is the client's: the connection handler
            # answers it 400 (`QuietRequestHandler`), anything else is ours, 500.
            count(route, 400 if parse_error_reason(exc) is not None else 500)
            raise
        count(route, response.status)
        return response

    return count_responses
