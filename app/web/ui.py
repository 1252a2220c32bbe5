"""The web dashboard at `/ui/`: static HTML, ES modules and CSS, read once at start.

The pages run in the browser and call the admin, evaluate, history, experiment and change
stream APIs with the token the user signed in with (kept in `sessionStorage`, sent as
`Authorization: Bearer`): the dashboard adds no second way to read or change anything, and
this view needs no credential since the files hold none. There is no build step: the files
under `app/web/ui/static/` are what the browser runs. Only those files are served, from a
dict filled at start, so no request path reaches the file system.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Final

from aiohttp import web

from app.web.responses import error

__all__ = ["STATIC", "DashboardUi"]

STATIC: Final = Path(__file__).resolve().parent / "ui" / "static"
CONTENT_TYPES: Final = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
}
# The pages load only their own files and talk only to this worker; no inline script runs.
HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def load_files(folder: Path) -> dict[str, tuple[bytes, str]]:
    """Every servable file of `folder` by name, with its content type."""
    files = {}
    for path in sorted(folder.iterdir()):
        content_type = CONTENT_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
        if path.is_file() and path.suffix in CONTENT_TYPES and content_type:
            files[path.name] = (path.read_bytes(), content_type)
    return files


class DashboardUi:
    """`GET /ui/` (the single page) and `GET /ui/{file}` (its modules and styles)."""

    def __init__(self, folder: Path = STATIC) -> None:
        self.files = load_files(folder)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/ui/", self.index),
            web.get("/ui/{file}", self.asset),
        ]

    def answer(self, name: str) -> web.Response:
        found = self.files.get(name)
        if found is None:
            return error(404, "NOT_FOUND", "the dashboard has no such file")
        body, content_type = found
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=HEADERS)

    async def index(self, request: web.Request) -> web.Response:
        return self.answer("index.html")

    async def asset(self, request: web.Request) -> web.Response:
        return self.answer(request.match_info["file"])
