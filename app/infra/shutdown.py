"""A bounded shutdown: the worker process exits at most N seconds after SIGTERM or SIGINT.

Faust stops its services one after another, and some wait on the broker: its producer
flushes records for a broker that does not answer for as long as its request timeout (20
minutes), which kept a worker alive after SIGTERM during a broker outage. The watchdog arms a
timer when the signal arrives and ends the process if the clean stop has not by then.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from mode import Service

__all__ = [
    "CLIENT_STOP_TIMEOUT_S",
    "EXIT_CODE",
    "GROUP_STOP_TIMEOUT_S",
    "ShutdownWatchdog",
    "stop_group_member",
    "stop_within",
]

log = logging.getLogger(__name__)

EXIT_CODE = 70  # EX_SOFTWARE: the clean stop did not finish in time


class ShutdownWatchdog(Service):
    """Exits the process `timeout_s` after the first SIGTERM/SIGINT if it is still running.

    Started with the Faust app (its first dependency), after the worker installed its own
    signal handling on the event loop: that is kept (asyncio learns of signals through its
    wake-up fd, whatever Python-level handler is installed), and this one only adds the timer.
    """

    def __init__(self, timeout_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timeout_s = timeout_s
        self._timer: threading.Timer | None = None

    async def on_start(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)
            signal.signal(signum, self._chain(previous))

    def _chain(self, previous: Any) -> Any:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.arm()
            if callable(previous):
                previous(signum, frame)

        return on_signal

    def arm(self) -> None:
        """Start the countdown (once)."""
        if self._timer is None:
            self._timer = threading.Timer(self.timeout_s, self._exit)
            self._timer.daemon = True
            self._timer.start()

    def _exit(self) -> None:
        log.error("the worker did not stop within %.0fs of the signal: exiting", self.timeout_s)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(EXIT_CODE)


CLIENT_STOP_TIMEOUT_S = 5.0  # longest wait for one Kafka client to stop (unsent records dropped)


async def stop_within(stopping: Awaitable[None], timeout_s: float = CLIENT_STOP_TIMEOUT_S) -> None:
    """Wait for a Kafka client to stop, at most `timeout_s`: a producer with records for an
    unreachable broker would otherwise wait for them as long as its request timeout."""
    try:
        await asyncio.wait_for(stopping, timeout_s)
    except (TimeoutError, KafkaError, OSError) as exc:
        log.warning("a Kafka client did not stop within %.0fs: %r", timeout_s, exc)


GROUP_STOP_TIMEOUT_S = 2.0  # longest wait for a group member to finish its group business


async def stop_group_member(
    consumer: AIOKafkaConsumer, timeout_s: float = GROUP_STOP_TIMEOUT_S
) -> None:
    """Stop a group consumer without waiting on a join or sync in flight.

    aiokafka's `stop` first lets the group coordinator finish what it is doing, and during a
    rebalance that is a JoinGroup the broker holds until the group forms (half the session
    timeout on Tansu, up to the rebalance timeout on Kafka), then a SyncGroup (0.8 x the session
    on Tansu when no leader assigns): ~8 s a round at the test timings, so a worker whose group
    was rejoining overran its shutdown watchdog. Past `timeout_s` the stop is cancelled (the
    member then leaves the group by session expiry, not by LeaveGroup) and what the cancelled
    stop left running, the coordinator's background tasks, the fetcher and the connections,
    is closed here.

    A member not in a generation (its first join still in flight, as when a worker stops soon
    after it started) has nothing to leave or commit (aiokafka sends LeaveGroup only from a
    generation), so its join is cancelled at once instead of waited for.
    """
    if not _in_a_generation(consumer):
        _cancel_coordination(consumer)
        await _close_what_stop_left(consumer)
        return
    try:
        await asyncio.wait_for(consumer.stop(), timeout_s)
        return
    except (TimeoutError, KafkaError, OSError) as exc:
        log.warning("a group consumer did not stop within %.0fs: %r", timeout_s, exc)
    await _close_what_stop_left(consumer)


def _in_a_generation(consumer: AIOKafkaConsumer) -> bool:
    """Whether the member has joined its group (generation -1 until a join succeeds)."""
    coordinator: Any = getattr(consumer, "_coordinator", None)
    return coordinator is None or coordinator.generation >= 0


def _cancel_coordination(consumer: AIOKafkaConsumer) -> None:
    """Cancel the coordinator's task (its join in flight), as a cancelled `stop` would."""
    coordinator: Any = getattr(consumer, "_coordinator", None)
    task = getattr(coordinator, "_coordination_task", None)
    if task is not None:
        task.cancel()


async def _close_what_stop_left(consumer: AIOKafkaConsumer) -> None:
    """The rest of `AIOKafkaConsumer.stop` after its coordinator's close was cancelled
    (aiokafka has no public call for it: these are the steps of its `stop` and `close`)."""
    coordinator: Any = getattr(consumer, "_coordinator", None)
    fetcher: Any = getattr(consumer, "_fetcher", None)
    client: Any = getattr(consumer, "_client", None)
    steps: list[Callable[[], Awaitable[None]]] = []
    if coordinator is not None:
        steps += [coordinator._stop_heartbeat_task, coordinator._stop_commit_offsets_refresh_task]
    if fetcher is not None:
        steps.append(fetcher.close)
    if client is not None:
        steps.append(client.close)
    for step in steps:
        await stop_within(step())
