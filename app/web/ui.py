"""The web dashboard at `/ui/`: static HTML, ES modules and CSS, read once at start.

The pages run in the browser and call the admin, evaluate, history, experiment and change
stream APIs with the token the user signed in with (kept in `sessionStorage`, sent as
`Authorization: Bearer`): the dashboard adds no second way to read or change anything, and
this view needs no credential since the files hold none. There is no build step: the files
under `app/web/ui/static/` are what the browser runs. Only those files are served, from a
dict filled at start, so no request path reaches the file system.

Caching: the page (`/ui/`) names its modules and styles under a folder named for a digest of
every file (`/ui/<digest>/app.js`), and the modules import each other by relative paths, so a
whole page's files share that folder. A digest's files never change, so the browser keeps them
(`immutable`) and a cold load of a page fetches only the HTML and the API answers; a new
release has a new digest. The page itself is revalidated on each load (`ETag`, 304).
"""

from __future__ import annotations

import hashlib
import mimetypes
from pathlib import Path
from typing import Final

from aiohttp import web

from app.web.responses import error

__all__ = ["STATIC", "DashboardUi"]

STATIC: Final = Path(__file__).resolve().parent / "ui" / "static"
INDEX: Final = "index.html"
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
}
REVALIDATE: Final = "no-cache"  # kept, but asked again (a 304 when unchanged)
KEEP: Final = "public, max-age=31536000, immutable"  # a digest folder's files never change


def load_files(folder: Path) -> dict[str, tuple[bytes, str]]:
    """Every servable file of `folder` by name, with its content type."""
    files = {}
    for path in sorted(folder.iterdir()):
        content_type = CONTENT_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
        if path.is_file() and path.suffix in CONTENT_TYPES and content_type:
            files[path.name] = (path.read_bytes(), content_type)
    return files


def digest_of(files: dict[str, tuple[bytes, str]]) -> str:
    """A short digest of every file's name and bytes: the folder name of this release."""
    hashed = hashlib.sha256()
    for name, (body, _) in sorted(files.items()):
        hashed.update(name.encode() + b"\0" + hashlib.sha256(body).digest())
    return hashed.hexdigest()[:16]


def pointed_at(index: bytes, names: list[str], folder: str) -> bytes:
    """The page with each `src`/`href` naming one of `names` moved into `folder`."""
    for name in names:
        for attribute in (b"src", b"href"):
            plain = attribute + b'="' + name.encode() + b'"'
            moved = attribute + b'="' + folder.encode() + b"/" + name.encode() + b'"'
            index = index.replace(plain, moved)
    return index


class DashboardUi:
    """`GET /ui/` (the single page), `GET /ui/{digest}/{file}` (its modules and styles, kept
    by the browser) and `GET /ui/{file}` (the same files, revalidated: older links)."""

    def __init__(self, folder: Path = STATIC) -> None:
        self.files = load_files(folder)
        self.digest = digest_of(self.files)
        if INDEX in self.files:
            body, content_type = self.files[INDEX]
            others = [name for name in self.files if name != INDEX]
            self.files[INDEX] = (pointed_at(body, others, self.digest), content_type)
        self.etags = {
            name: f'"{hashlib.sha256(b).hexdigest()[:16]}"' for name, (b, _) in self.files.items()
        }

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/ui/", self.index),
            web.get("/ui/{digest}/{file}", self.kept_asset),
            web.get("/ui/{file}", self.asset),
        ]

    def answer(self, request: web.Request, name: str, cache: str) -> web.Response:
        found = self.files.get(name)
        if found is None:
            return error(404, "NOT_FOUND", "the dashboard has no such file")
        body, content_type = found
        headers = {**HEADERS, "Cache-Control": cache, "ETag": self.etags[name]}
        if request.headers.get("If-None-Match") == self.etags[name]:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=headers)

    async def index(self, request: web.Request) -> web.Response:
        return self.answer(request, INDEX, REVALIDATE)

    async def kept_asset(self, request: web.Request) -> web.Response:
        if request.match_info["digest"] != self.digest:
            message = "the dashboard was updated since this page loaded: reload it"
            return error(404, "NOT_FOUND", message)
        return self.answer(request, request.match_info["file"], KEEP)

    async def asset(self, request: web.Request) -> web.Response:
        return self.answer(request, request.match_info["file"], REVALIDATE)
