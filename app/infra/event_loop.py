"""Which asyncio event loop a worker runs on: uvloop (the default) or asyncio's own.

Faust and mode take the loop from asyncio's event loop policy when they first need one (the
worker's main loop and the Kafka consumer thread's), so the policy is set once, before the
app is built. uvloop is a drop-in loop on libuv; `asyncio` stays selectable
(FLAGSTREAM_EVENT_LOOP) for a platform without it or to compare.
"""

from __future__ import annotations

import asyncio
import sys

__all__ = ["EVENT_LOOPS", "use_event_loop"]

EVENT_LOOPS = ("uvloop", "asyncio")


def use_event_loop(name: str) -> None:
    """Make every event loop created from now on in this process a `name` loop, and say so
    on stderr (the worker's log) so a run's loop is on record."""
    if name not in EVENT_LOOPS:
        raise ValueError(f"FLAGSTREAM_EVENT_LOOP must be one of {', '.join(EVENT_LOOPS)}: {name!r}")
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    print(f"flagstream: event loop {name}", file=sys.stderr, flush=True)
