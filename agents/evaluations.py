"""The evaluation service: answers each record on `evaluation-requests` with one result record.

Read top to bottom: decode (a pure function of the bytes), evaluate every valid request
against this worker's flag table, encode, produce to `evaluation-results` (or the request's
`reply_to`), and park a malformed record as a dead letter. Nothing a requester sends can stop
this loop: every failure is a value that ends in an error result and a dead letter.

Why a plain aiokafka consumer group (`<app id>-evaluations`) run as a Faust service, not a
Faust agent: a Faust stream costs ~90 us of the worker's one core per record before the agent
sees it (its fetcher wraps every message in `wait_first`, two tasks and an `asyncio.wait`,
then a queue hop), which capped an agent doing this work at ~35% of a consume-only agent's
rate; this loop takes the fetched batch as it comes (benchmarks/RESULTS.md, issue 4).
Delivery is at least once: the offsets of a partition are committed only after the producer
has flushed every result of the records before them, and on revocation before a rebalance.

Bounded, so a burst is consumed slower rather than buffered: a fetch hands the loop at most
MAX_POLL_RECORDS records (aiokafka prefetches at most one fetch per partition behind them), the
loop answers them one by one, and at most FLAGSTREAM_EVALUATION_MAX_IN_FLIGHT results are
produced but not yet acknowledged: at the bound the loop waits for acks before it produces
(and so before it reads) more. aiokafka's own buffer bounds bytes per partition, not records,
so a burst of small results could otherwise sit in it by the hundred thousand. The requests a
worker cannot take yet wait in the topic, where they cost nothing and any worker may take them.
The wait is `flagstream_evaluation_backpressure_seconds_total`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.structs import TopicPartition
from mode import Service

from agents.dead_letters import DeadLetterSender
from app.engine import Reason, flag_not_found
from app.evaluation.evaluator import Evaluator
from app.evaluation.records import (
    Invalid,
    Request,
    Requests,
    decode_requests,
    encode_results,
    error_json,
    flag_json,
    result_json,
)
from app.evaluation.stats import NOT_FOUND
from app.infra.fetch_wait import pace_when_idle
from app.infra.kafka_security import kafka_client_options
from app.infra.metrics import Metrics
from app.infra.records import JSON, DeadLetterCode, Rejection
from app.infra.settings import Settings
from app.infra.shutdown import stop_group_member, stop_within
from app.infra.topics import Topics
from tables.flags import FlagTable
from tables.replication import FlagReplication

__all__ = ["EvaluationRequests"]

log = logging.getLogger(__name__)
SOURCE = "kafka"  # the `path` label of the evaluation metrics and the `source` of exposures
COMMIT_EVERY_S = 1.0  # offsets are committed (after a producer flush) at most this often
HOLD_LOOP_S = 0.01  # longest stretch the loop answers without letting other tasks run
MAX_POLL_RECORDS = 2000  # records per fetch handed to the loop (bounds a flush's backlog)
REPLY_TOPIC_WAIT_S = 2.0  # how long to wait for a reply topic's metadata the first time
REPLY_TOPIC_RECHECK_S = 30.0  # how long a missing reply topic is believed missing
MAX_REPLY_TOPICS = 10_000  # topics remembered (the cache is dropped, not grown, beyond it)


class EvaluationRequests(Service):
    """Consumes `evaluation-requests` in a consumer group and answers every record."""

    def __init__(
        self,
        settings: Settings,
        flags: FlagTable,
        replication: FlagReplication,
        evaluator: Evaluator,
        metrics: Metrics,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Pre-bound children: a labelled lookup per record would cost more than an evaluation.
        self.evaluated = metrics.evaluation_requests.labels("evaluated")
        self.malformed = metrics.evaluation_requests.labels("malformed")
        self.unanswered = metrics.evaluation_requests.labels("unanswered")
        self.topics = Topics.of(settings)
        self.dead_letters = DeadLetterSender(
            self.topics.evaluation_requests, self._send_dead_letter, metrics
        )
        self.settings = settings
        self.flags = flags
        self.replication = replication
        self.evaluator = evaluator
        # Reply topic -> (exists, when checked, monotonic seconds).
        self.reply_topics: dict[str, tuple[bool, float]] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        # Next offset to commit per partition: one past the last record answered.
        self._done: dict[TopicPartition, int] = {}
        # Results (and dead letters) produced and not yet acknowledged, at most max_in_flight.
        self.max_in_flight = max(1, settings.evaluation_max_in_flight)
        self.in_flight = 0
        self.peak_in_flight = 0
        self._room = asyncio.Event()  # set while in_flight < max_in_flight
        self._room.set()
        self.backpressure = metrics.evaluation_backpressure_seconds
        metrics.evaluation_results_in_flight.set_function(lambda: self.in_flight)
        metrics.evaluation_results_in_flight_peak.set_function(lambda: self.peak_in_flight)
        self.consumer_lag = metrics.consumer_lag

    async def on_start(self) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap,
            **kafka_client_options(self.settings),
            acks="all",
            linger_ms=2,
            max_batch_size=256 * 1024,
            enable_idempotence=self.settings.producer_idempotence,
        )
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap,
            **kafka_client_options(self.settings),
            group_id=f"{self.settings.app_id}-evaluations",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
            max_poll_records=MAX_POLL_RECORDS,
            rebalance_timeout_ms=int(self.settings.rebalance_timeout_s * 1000),
            session_timeout_ms=int(self.settings.session_timeout_s * 1000),
            heartbeat_interval_ms=int(self.settings.heartbeat_s * 1000),
        )
        await self.producer.start()
        await self.consumer.start()
        self.consumer_lag.watch("evaluations", self.consumer, lambda tp: self._done.get(tp))
        pace_when_idle(
            self.consumer, self.settings.fetch_max_wait_ms, self.settings.background_poll_ms
        )

    async def on_stop(self) -> None:
        if self.consumer is not None:
            await self.commit()
            # Bounded: mid-rebalance a plain stop waits for the join and sync in flight.
            await stop_group_member(self.consumer)
        if self.producer is not None:
            await stop_within(self.producer.stop())

    @Service.task
    async def _answer_forever(self) -> None:
        # Answering before the flag table has caught up would say FLAG_NOT_FOUND for flags
        # that exist: join the group only once it has.
        await self.replication.ready.wait()
        if self.consumer is None:
            raise RuntimeError("the evaluation requests are answered only once started")
        self.consumer.subscribe([self.topics.evaluation_requests], listener=_CommitOnRevoke(self))
        last_commit = time.monotonic()
        yield_at = time.perf_counter() + HOLD_LOOP_S
        while not self.should_stop:
            batches = await self.consumer.getmany(timeout_ms=1000)
            for tp, records in batches.items():
                for record in records:
                    await self.handle(record.key, record.value, tp.partition, record.offset)
                    if time.perf_counter() > yield_at:
                        await asyncio.sleep(0)  # let the web server and heartbeats run
                        yield_at = time.perf_counter() + HOLD_LOOP_S
                if records:
                    self._done[tp] = records[-1].offset + 1
            if time.monotonic() - last_commit >= COMMIT_EVERY_S:
                await self.commit()
                last_commit = time.monotonic()

    async def commit(self) -> None:
        """Commit what has been answered, once its results are written (at least once)."""
        if not self._done or self.consumer is None or self.producer is None:
            return
        done, self._done = self._done, {}
        await self.producer.flush()
        assigned = self.consumer.assignment()
        offsets = {tp: offset for tp, offset in done.items() if tp in assigned}
        if offsets:
            try:
                await self.consumer.commit(offsets)
            except Exception as exc:  # a rebalance in between: the next owner answers again
                log.warning("committing %s failed: %r", offsets, exc)

    async def handle(
        self, key: bytes | None, raw: bytes | None, partition: int, offset: int
    ) -> None:
        """Answer one record; a failure of any kind ends in a dead letter, never an exception."""
        started = time.perf_counter()
        try:
            decoded = decode_requests(raw, self.topics.evaluation_results)
            if isinstance(decoded, Requests) and not await self.reply_topic_exists(
                decoded.reply_to
            ):
                decoded = self._unknown_reply_topic(decoded)
            answer = [] if isinstance(decoded, Rejection) else self.evaluate(decoded)
        except Exception as exc:  # a bug must not stop the data plane: park the record
            log.exception(
                "answering %s/%d/%d failed", self.topics.evaluation_requests, partition, offset
            )
            decoded, answer = Rejection(DeadLetterCode.MALFORMED, f"internal error: {exc!r}"), []
        if answer and isinstance(decoded, Requests):  # an answer is only ever to requests
            for value in answer:
                await self.send(decoded.reply_to, key, value)
        if isinstance(decoded, Rejection):
            await self.dead_letters.park(decoded, raw, partition, offset)
        elif decoded.problems:
            reason = "malformed evaluation request(s)"
            rejection = Rejection.malformed(reason, *decoded.problems)
            await self.dead_letters.park(rejection, raw, partition, offset)
        self.evaluator.stats.observe(SOURCE, time.perf_counter() - started)

    def evaluate(self, decoded: Requests) -> list[bytes]:
        """The result records for a decoded record (none when no item has an id to answer)."""
        now = time.time()
        results: list[JSON] = []
        malformed = 0
        for item in decoded.items:
            if isinstance(item, Request):
                results.append(result_json(item, self.evaluate_one(item, now), now))
            else:
                malformed += 1
                if item.request_id is not None or decoded.batch:
                    results.append(error_json(item, now))
        if malformed:
            self.malformed.inc(malformed)
        if len(decoded.items) > malformed:
            self.evaluated.inc(len(decoded.items) - malformed)
        return encode_results(results, decoded.batch) if results else []

    def evaluate_one(self, request: Request, now: float) -> list[JSON]:
        """Every flag the request asks for, as result entries."""
        if self.flags.environment_seq(request.environment) == 0:
            # An environment that never had a flag: answered without the evaluator, so names a
            # requester makes up neither fill its per-environment cache nor become metric labels.
            self.evaluator.stats.count(SOURCE, NOT_FOUND, NOT_FOUND, "", Reason.ERROR)
            return [flag_json(key, None, flag_not_found(key)) for key in request.flags or ()]
        evaluated = self.evaluator.many(
            request.environment, request.flags, request.context, now, SOURCE
        )
        return [flag_json(key, live, resolution) for key, live, resolution in evaluated]

    async def reply_topic_exists(self, topic: str) -> bool:
        """Whether the producer can reach `topic`, asked of the broker once per topic.

        Producing to a missing topic would hold this loop for the producer's whole request
        timeout (aiokafka waits for its metadata); a missing topic is remembered for a while, so
        requests naming one cannot stall the agent either.
        """
        known = self.reply_topics.get(topic)
        if known is not None and (known[0] or time.monotonic() - known[1] < REPLY_TOPIC_RECHECK_S):
            return known[0]
        if len(self.reply_topics) >= MAX_REPLY_TOPICS:
            self.reply_topics.clear()
        producer = self.producer
        if producer is None:
            raise RuntimeError("records are sent only once started")
        try:
            await asyncio.wait_for(producer.partitions_for(topic), REPLY_TOPIC_WAIT_S)
            exists = True
        except Exception:  # a timeout or an unknown-topic error from the broker
            exists = False
        self.reply_topics[topic] = (exists, time.monotonic())
        return exists

    def _unknown_reply_topic(self, decoded: Requests) -> Requests:
        problem = ("$.reply_to", f"topic {decoded.reply_to!r} does not exist")
        items: list[Request | Invalid] = [
            Invalid(item.request_id, item.environment, (*getattr(item, "problems", ()), problem))
            for item in decoded.items
        ]
        return Requests(items, decoded.batch, self.topics.evaluation_results)

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Queue a record and return; its delivery is checked by a callback (see the docstring).

        Awaiting `producer.send` only waits while the producer's buffer is full: backpressure.
        """
        producer = self.producer
        if producer is None:
            raise RuntimeError("records are sent only once started")
        if self.in_flight >= self.max_in_flight:
            await self._wait_for_room()
        try:
            delivery = await producer.send(topic, value, key=key)
        except Exception as exc:
            self._failed(exc)
            return
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight
        if self.in_flight >= self.max_in_flight:
            self._room.clear()
        delivery.add_done_callback(self._check_delivered)

    async def _wait_for_room(self) -> None:
        """Wait until an ack brings the results in flight below the bound (counted)."""
        started = time.perf_counter()
        while self.in_flight >= self.max_in_flight:
            self._room.clear()
            await self._room.wait()
        self.backpressure.inc(time.perf_counter() - started)

    async def _send_dead_letter(self, letter: bytes) -> None:
        await self.send(self.topics.dead_letters, None, letter)

    def _check_delivered(self, delivery: asyncio.Future[Any]) -> None:
        self.in_flight -= 1
        if self.in_flight < self.max_in_flight:
            self._room.set()
        exc = None if delivery.cancelled() else delivery.exception()
        if exc is not None:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.unanswered.inc()
        log.error("an evaluation result could not be produced: %r", exc)


class _CommitOnRevoke(ConsumerRebalanceListener):
    """Commits before partitions move, so their next owner answers as little twice as possible."""

    def __init__(self, service: EvaluationRequests) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.service.commit()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        pass
