"""Whether this worker's broker is there, and whether writes may go out.

While the broker is unreachable the worker serves its last known flags and refuses writes at
once (`writable` is clear). The watch probes the broker every `PROBE_INTERVAL_S`; when it
answers again (or a changelog partition suddenly ends before the table's position, or the
log cannot be read on), the replication's `recover()` re-creates missing topics, checks the
log and, if the broker lost its data, rebuilds the table from the new, usually empty,
changelog. Only then, and after every `before_writes` step (the dead-letter reader moving to
the new log's end), are writes accepted again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from mode import Service

from app.infra.kafka_security import kafka_client_options
from app.infra.metrics import Metrics
from app.infra.settings import Settings
from app.infra.shutdown import stop_within
from app.infra.topics import topic_specs
from tables.replication import FlagReplication

__all__ = ["PROBE_INTERVAL_S", "BrokerState", "BrokerWatch"]

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 1.0  # how often the broker is asked whether it is there and has our topics
PROBE_TIMEOUT_S = 3.0  # longest wait for one probe (a metadata request) before "unreachable"
RECOVER_TIMEOUT_S = 30.0  # longest a recovery may take before it is tried again


class BrokerState(Enum):
    """What this worker knows of its broker; writes are accepted only when `REACHABLE`."""

    REACHABLE = "reachable"  # answering, and the table agrees with its changelog
    UNREACHABLE = "unreachable"  # no answer to the last probe: serving last known flags
    RECOVERING = "recovering"  # answering again; the log is being checked (table rebuilt)


class BrokerWatch(Service):
    """Probes the broker, recovers the replication when it comes back, gates writes."""

    def __init__(
        self, settings: Settings, replication: FlagReplication, metrics: Metrics, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.metrics = metrics
        self.replication = replication
        # Set while the broker answers and the table agrees with its log: writes may go out.
        self.writable = asyncio.Event()
        self.broker_state = BrokerState.REACHABLE
        # Monotonic time the broker stopped answering; None once writes are accepted again.
        self._stale_since: float | None = None
        metrics.flags_stale_seconds.set_function(self._stale_seconds)
        self._admin: AIOKafkaAdminClient | None = None
        self._before_writes: list[Callable[[], Awaitable[None]]] = []
        # Changelog ends short of the table's positions already found to be the same log.
        self._short_ends_checked: dict[int, int] = {}
        replication.on_unreadable(lambda: self._set_state(BrokerState.RECOVERING))
        # Writes are accepted from the moment the worker says it is ready, not a moment later.
        replication.before_ready(self._open_writes)

    def before_writes(self, step: Callable[[], Awaitable[None]]) -> None:
        """Await `step` each time before writes are let out (at start, after a recovery)."""
        self._before_writes.append(step)

    async def on_start(self) -> None:
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=self.settings.bootstrap,
            **kafka_client_options(self.settings),
            request_timeout_ms=int(PROBE_TIMEOUT_S * 1000),
        )
        await self._admin.start()
        self.metrics.broker_reachable.set(1)

    async def on_stop(self) -> None:
        if self._admin is not None:
            await stop_within(self._admin.close())

    @Service.task
    async def _watch(self) -> None:
        """Once the table caught up (writes opened), probe every `PROBE_INTERVAL_S`."""
        await self.replication.ready.wait()
        while not self.should_stop:
            await self.sleep(PROBE_INTERVAL_S)
            topics = await self._probe()
            if topics is None:
                self._set_state(BrokerState.UNREACHABLE)
            elif not await self._steady(topics):
                await self._recover()

    async def _open_writes(self) -> None:
        for step in self._before_writes:
            await step()
        self._set_state(BrokerState.REACHABLE)
        self.writable.set()

    async def _recover(self) -> None:
        self._set_state(BrokerState.RECOVERING)
        try:
            async with asyncio.timeout(RECOVER_TIMEOUT_S):
                await self.replication.recover()
                await self._open_writes()
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("recovery after the broker came back failed (%r): retrying", exc)

    def _set_state(self, state: BrokerState) -> None:
        if state is not self.broker_state:
            # One template per state: the log's repeat limit (app.infra.log_limit) keys on it.
            if state is BrokerState.REACHABLE:
                log.info("broker %s reachable: writes accepted", self.settings.bootstrap)
            elif state is BrokerState.UNREACHABLE:
                log.warning(
                    "broker %s unreachable: serving last known flags, refusing writes",
                    self.settings.bootstrap,
                )
            else:
                log.warning("broker %s back: checking its changelog", self.settings.bootstrap)
        self.broker_state = state
        self.metrics.broker_reachable.set(0 if state is BrokerState.UNREACHABLE else 1)
        self._note_staleness(state)
        if state is not BrokerState.REACHABLE:
            self.writable.clear()

    def _note_staleness(self, state: BrokerState) -> None:
        """Flags are stale from the first unanswered probe until the log is checked again."""
        if state is BrokerState.REACHABLE:
            self._stale_since = None
        elif state is BrokerState.UNREACHABLE and self._stale_since is None:
            self._stale_since = time.monotonic()

    def _stale_seconds(self) -> float:
        since = self._stale_since
        return 0.0 if since is None else time.monotonic() - since

    async def _steady(self, topics: set[str]) -> bool:
        """Whether nothing happened since the last probe that calls for a recovery."""
        expected = {spec.name for spec in topic_specs(self.settings)}
        if self.broker_state is not BrokerState.REACHABLE or not expected <= topics:
            return False
        return not await self._log_may_have_changed()

    async def _probe(self) -> set[str] | None:
        """The broker's topics, or None when it does not answer within `PROBE_TIMEOUT_S`."""
        if self._admin is None:
            raise RuntimeError("the broker watch is not started")
        try:
            return set(await asyncio.wait_for(self._admin.list_topics(), PROBE_TIMEOUT_S))
        except (TimeoutError, KafkaError, OSError):
            return None

    async def _log_may_have_changed(self) -> bool:
        """Whether a changelog partition now ends before the table's position.

        Cheap (one ListOffsets) and a superset of the real cases: Tansu may report an end short
        of the last record, which `recover()` then finds to be the same log.
        """
        try:
            ends = await self.replication.end_offsets(PROBE_TIMEOUT_S)
        except (TimeoutError, KafkaError, OSError):
            return False  # the next probe decides
        table = self.replication.table
        short = {
            partition: end for partition, end in ends.items() if end < table.position(partition)
        }
        if not short or short == self._short_ends_checked:
            return False
        self._short_ends_checked = short
        return True
