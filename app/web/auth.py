"""Who may do what: an admin token writes (and reads), read tokens read.

Admin and read tokens are compared in constant time, every configured token on every
request, so response timing reveals neither a token's prefix nor which list it is in. SDK keys,
checked on every evaluation, are looked up by SHA-256 digest instead (see `sdk_environment`).
Tokens never reach a log line: only the outcome (401/403) does, and a write whose `X-Actor` or
`Idempotency-Key` holds a credential is refused (`holds_secret`): both are stored in the
changelog and the flag history and echoed in answers and dead letters.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import IntEnum
from typing import Final

from aiohttp import web

from app.infra.settings import Settings
from app.web.responses import error

__all__ = ["ADMITTED_OBJECTS", "Access", "Credentials", "bearer", "token_of"]

# SDK key objects `Credentials.admitted_environment` remembers: about one per fast connection.
ADMITTED_OBJECTS: Final = 4096


class Access(IntEnum):
    NONE = 0
    READ = 1
    WRITE = 2


def bearer(request: web.Request) -> str | None:
    """The token of an `Authorization: Bearer` header (or `X-API-Key`, as OFREP clients send)."""
    return token_of(request.headers.get("Authorization"), request.headers.get("X-API-Key"))


def token_of(authorization: str | None, api_key: str | None) -> str | None:
    """`bearer` from the two header values (the OFREP fast path has no aiohttp request)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return api_key or None


class Credentials:
    """The worker's tokens and SDK keys, and every check made against them.

    Built once by the composition root from `Settings`: the SDK keys' digests are computed
    here, not per request.
    """

    def __init__(self, settings: Settings) -> None:
        self._admin_token = settings.admin_token.encode()
        self._read_tokens = tuple(token.encode() for token in settings.read_tokens)
        self._sdk_keys = tuple(key.encode() for key in settings.sdk_keys)
        self._sdk_digests = {
            hashlib.sha256(key.encode()).digest(): environment
            for key, environment in settings.sdk_keys.items()
        }
        self._admitted: dict[int, tuple[str, str]] = {}  # see `admitted_environment`

    def access_of(self, token: str | None) -> Access:
        if not token:
            return Access.NONE
        given = token.encode("utf-8", "surrogateescape")
        is_admin = bool(self._admin_token) and hmac.compare_digest(given, self._admin_token)
        is_reader = False
        for read_token in self._read_tokens:
            is_reader |= hmac.compare_digest(given, read_token)
        if is_admin:
            return Access.WRITE
        return Access.READ if is_reader else Access.NONE

    def refuse(self, request: web.Request, needed: Access) -> web.Response | None:
        """A 401/403 response when the request may not do what it asks, else None."""
        granted = self.access_of(bearer(request))
        if granted is Access.NONE:
            return error(
                401,
                "UNAUTHORIZED",
                "a valid bearer token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if granted < needed:
            return error(403, "FORBIDDEN", "this token may read but not write")
        return None

    def may_read_environment(self, request: web.Request, environment: str) -> bool:
        """A read or admin token reads every environment; an SDK key reads its own."""
        if self.access_of(bearer(request)) >= Access.READ:
            return True
        return self.sdk_environment(request) == environment

    def sdk_environment(self, request: web.Request) -> str | None:
        """The environment the request's SDK key (Bearer or X-API-Key) selects, if any.

        Keys are looked up by their SHA-256 digest: one hash and one dict lookup per request,
        however many keys there are, and the lookup's timing depends on the digest, which
        tells an attacker nothing about which bytes of a guessed key were right.
        """
        return self.sdk_key_environment(bearer(request))

    def sdk_key_environment(self, token: str | None) -> str | None:
        """The environment an SDK key selects, if any (see `sdk_environment`)."""
        if not token:
            return None
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        return self._sdk_digests.get(digest)

    def admitted_environment(self, token: str | None) -> str | None:
        """`sdk_key_environment`, remembered by the token object's identity.

        The OFREP fast path hands every request of a connection the one str object it
        admitted, so hashing that key again per request (~4% of an answer's CPU) is spared:
        `is` compares no byte of any key, so it tells an attacker nothing. Only keys that
        select an environment are remembered (each held, so its id is not reused while
        remembered), at most ADMITTED_OBJECTS of them: emptied when full.
        """
        remembered = self._admitted.get(id(token))
        if remembered is not None and remembered[0] is token:
            return remembered[1]
        environment = self.sdk_key_environment(token)
        if environment is not None and token is not None:
            if len(self._admitted) >= ADMITTED_OBJECTS:
                self._admitted.clear()
            self._admitted[id(token)] = (token, environment)
        return environment

    def holds_secret(self, text: str | None) -> bool:
        """Whether `text` contains a credential of this worker (admin or read token, SDK key).

        Compared in constant time at every offset, like `access_of`: the caller may be an
        admin who does not know the read tokens or SDK keys. `text` is short (an actor, a
        change id).
        """
        if not text:
            return False
        given = text.encode("utf-8", "surrogateescape")
        found = False
        for wanted in (self._admin_token, *self._read_tokens, *self._sdk_keys):
            for start in range(len(given) - len(wanted) + 1 if wanted else 0):
                found |= hmac.compare_digest(given[start : start + len(wanted)], wanted)
        return found
