"""At most one log line per logger and message per window: a lost broker must not flood the log.

aiokafka and Faust log every failed reconnect, metadata update and fetch (about 230 ERROR lines
a second were seen while the broker was down). `RepeatLimit` lets the first record of each
(logger, message template) through, drops the repeats for `window_s`, and the next one that
passes says how many were dropped. Records below WARNING pass untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from mode import Service

__all__ = ["RepeatLimiter"]

WINDOW_S = 10.0  # seconds a repeated warning or error is held back
MAX_KEYS = 10_000  # message templates remembered (forgotten all at once beyond it)


class RepeatLimit(logging.Filter):
    """A handler filter: one record per (logger, template) per `window_s`, with a count."""

    def __init__(
        self, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        # (logger, template) -> (when the window opened, records dropped in it)
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        opened, dropped = self._seen.get(key, (-self.window_s, 0))
        if now - opened < self.window_s:
            self._seen[key] = (opened, dropped + 1)
            return False
        if len(self._seen) >= MAX_KEYS:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if dropped:
            record.msg = f"{record.getMessage()} [{dropped} more like this in {now - opened:.0f}s]"
            record.args = ()
        return True


def limit_repeats(window_s: float = WINDOW_S) -> RepeatLimit:
    """Put one `RepeatLimit` on every handler of the root logger (once); return it.

    Call after logging is configured: Faust's worker sets up its handlers when it is built.
    """
    root = logging.getLogger()
    for handler in root.handlers:
        for existing in handler.filters:
            if isinstance(existing, RepeatLimit):
                return existing
    limit = RepeatLimit(window_s)
    for handler in root.handlers:
        handler.addFilter(limit)
    return limit


class RepeatLimiter(Service):
    """Installs `limit_repeats` when the worker starts, once its logging is configured."""

    async def on_start(self) -> None:
        limit_repeats()
