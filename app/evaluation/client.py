"""A small asyncio client for evaluation over Kafka: send requests, await their results.

    async with EvaluationClient("127.0.0.1:9092", topics=Topics.named("flagstream")) as client:
        result = await client.evaluate("production", {"targetingKey": "user-1"})
        results = await client.evaluate_many("production", [context_a, context_b], ["new-ui"])

    # The cluster and its TLS/SASL settings from the FLAGSTREAM_* environment, as a worker's:
    async with EvaluationClient.from_settings(Settings.from_env()) as client: ...

Results are matched to requests by `request_id`. The client reads the results topic without a
consumer group (every partition, from its end at start), so any number of clients can share
`<prefix>.evaluation-results`, each reading every result. Above a few thousand results per
second, give each client (or service) its own reply topic, `<prefix>.evaluation-results.<name>`,
created beforehand: then a client reads only its own results. `topics` names the deployment's
topics (`Topics.named(<FLAGSTREAM_TOPIC_PREFIX or app id>)`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.engine import JsonObject
from app.evaluation.records import (
    EvaluationResult,
    decode_results,
    encode_requests,
    valid_reply_topic,
)
from app.infra.kafka_security import kafka_client_options
from app.infra.settings import Settings
from app.infra.topics import Topics

__all__ = ["EvaluationClient"]


class EvaluationClient:
    """Sends evaluation requests and resolves each with its result, or TimeoutError."""

    def __init__(
        self,
        bootstrap: str,
        *,
        topics: Topics,
        reply_to: str | None = None,
        timeout_s: float = 5.0,
        fetch_max_wait_ms: int = 100,
        linger_ms: int = 0,
        security: Mapping[str, Any] | None = None,
    ) -> None:
        """`fetch_max_wait_ms` bounds latency on brokers that hold every fetch (use ~10 on
        the embedded one); Kafka answers a fetch as soon as results arrive. `security`: the
        TLS/SASL options of `app.infra.kafka_security.kafka_client_options` (`from_settings`
        passes them)."""
        results = topics.evaluation_results
        if reply_to is not None and not valid_reply_topic(reply_to, results):
            raise ValueError(f"reply_to must be {results} or {results}.<name>")
        self.requests_topic = topics.evaluation_requests
        self.results_topic = reply_to or results
        self.reply_to = reply_to
        self.timeout_s = timeout_s
        options = dict(security or {})
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, **options, linger_ms=linger_ms
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            **options,
            enable_auto_commit=False,
            fetch_max_wait_ms=fetch_max_wait_ms,
        )
        self._pending: dict[str, asyncio.Future[EvaluationResult]] = {}
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> EvaluationClient:
        """A client of the cluster `settings` name, with their TLS and SASL options."""
        security = kafka_client_options(settings)
        return cls(settings.bootstrap, topics=Topics.of(settings), security=security, **options)

    async def __aenter__(self) -> EvaluationClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        await self._producer.start()
        await self._consumer.start()
        partitions = await self._producer.partitions_for(self.results_topic)
        tps = [TopicPartition(self.results_topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        # seek_to_end is lazy: resolve the positions now, or a result produced before the
        # first fetch would be skipped.
        for tp in tps:
            await self._consumer.position(tp)
        self._reader = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        for future in self._pending.values():
            future.cancel()
        await self._consumer.stop()
        await self._producer.stop()

    async def evaluate(
        self,
        environment: str,
        context: JsonObject,
        flags: Sequence[str] | None = None,
    ) -> EvaluationResult:
        """One request: `flags` of `environment` (every flag when None) for `context`."""
        (result,) = await self.evaluate_many(environment, [context], flags)
        return result

    async def evaluate_many(
        self,
        environment: str,
        contexts: Sequence[JsonObject],
        flags: Sequence[str] | None = None,
    ) -> list[EvaluationResult]:
        """One request per context, sent as one batch record; results in the same order."""
        if not contexts:
            return []
        requests = [
            (uuid.uuid4().hex, environment, context, list(flags) if flags is not None else None)
            for context in contexts
        ]
        loop = asyncio.get_running_loop()
        futures = [self._pending.setdefault(rid, loop.create_future()) for rid, *_ in requests]
        try:
            first_key = contexts[0].get("targetingKey") if contexts else None
            key = first_key.encode() if isinstance(first_key, str) else None
            await self._producer.send_and_wait(
                self.requests_topic, encode_requests(requests, self.reply_to), key=key
            )
            async with asyncio.timeout(self.timeout_s):
                return list(await asyncio.gather(*futures))
        finally:
            for rid, *_ in requests:
                self._pending.pop(rid, None)

    async def _read(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    if record.value is None:
                        continue
                    for result in decode_results(record.value):
                        future = self._pending.get(result.request_id)
                        if future is not None and not future.done():
                            future.set_result(result)
