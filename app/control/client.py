"""A small synchronous client of the admin API, for the CLI and scripts.

Synchronous on purpose: the CLI does one thing at a time, and urllib needs no event loop.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

__all__ = ["AdminClient", "AdminError", "Reply"]


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


class AdminError(RuntimeError):
    """The API answered with an error; the message is the API's own."""

    def __init__(self, reply: Reply) -> None:
        error = reply.body.get("error", {}) if isinstance(reply.body, dict) else {}
        problems = "".join(f"\n  {p['path']}: {p['message']}" for p in error.get("problems", []))
        super().__init__(
            f"HTTP {reply.status} {error.get('code', '')}: "
            f"{error.get('message', reply.body)}{problems}"
        )
        self.reply = reply


class AdminClient:
    def __init__(
        self, base_url: str, token: str, actor: str = "cli", timeout_s: float = 30.0
    ) -> None:
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise ValueError(f"the admin API's URL must be http(s)://, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.actor = actor
        self.timeout_s = timeout_s

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Reply:
        data = orjson.dumps(body) if body is not None else None
        url = self.base_url + path  # http(s), checked in __init__ (S310)
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("X-Actor", self.actor)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                return _reply(response.status, response.read(), dict(response.headers))
        except urllib.error.HTTPError as exc:
            return _reply(exc.code, exc.read(), dict(exc.headers))

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Any:
        reply = self.request(method, path, body, headers)
        if reply.status >= 400:
            raise AdminError(reply)
        return reply.body

    # -- the API, one method per endpoint --------------------------------------------------

    def environments(self) -> dict[str, int]:
        """Every environment that ever had a change, with the seq of its last one."""
        rows = self.call("GET", "/api/v1/environments")["environments"]
        return {str(row["environment"]): int(row["seq"]) for row in rows}

    def flags(self, env: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/v1/environments/{quote(env)}/flags")["flags"])

    def summary(self, env: str) -> list[dict[str, Any]]:
        return list(
            self.call("GET", f"/api/v1/environments/{quote(env)}/flags?view=summary")["flags"]
        )

    def flag(self, env: str, key: str) -> Reply:
        return self.request("GET", f"/api/v1/environments/{quote(env)}/flags/{quote(key)}")

    def put(self, env: str, key: str, definition: Any, version: int | None = None) -> Any:
        headers = {"If-Match": f'"{version}"'} if version is not None else None
        return self.call(
            "PUT", f"/api/v1/environments/{quote(env)}/flags/{quote(key)}", definition, headers
        )

    def delete(self, env: str, key: str, version: int | None = None) -> Any:
        headers = {"If-Match": f'"{version}"'} if version is not None else None
        return self.call(
            "DELETE", f"/api/v1/environments/{quote(env)}/flags/{quote(key)}", None, headers
        )

    def write(
        self, env: str, key: str, definition: Any | None, *, change_id: str, actor: str
    ) -> Reply:
        """PUT `definition` (DELETE for None) as change `change_id` by `actor`, unconditionally.

        The change id is the `Idempotency-Key`: sending the same write again is answered with
        the change it made the first time, so a caller may retry blindly.
        """
        path = f"/api/v1/environments/{quote(env)}/flags/{quote(key)}"
        headers = {"Idempotency-Key": change_id, "X-Actor": actor}
        if definition is None:
            return self.request("DELETE", path, None, headers)
        return self.request("PUT", path, definition, headers)

    def history(self, env: str, key: str) -> list[dict[str, Any]]:
        return list(
            self.call("GET", f"/api/v1/environments/{quote(env)}/flags/{quote(key)}/history")[
                "versions"
            ]
        )

    def set_state(self, env: str, key: str, state: str) -> Any:
        return self.call(
            "POST", f"/api/v1/environments/{quote(env)}/flags/{quote(key)}/state", {"state": state}
        )


def _reply(status: int, raw: bytes, headers: dict[str, str]) -> Reply:
    try:
        body = orjson.loads(raw) if raw else None
    except ValueError:
        body = raw.decode(errors="replace")
    return Reply(status, body, headers)
