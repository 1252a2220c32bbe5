"""Evaluation over Kafka: how fast a worker answers requests, beside its references.

One run, one embedded broker, one set of pre-produced request records per scenario:

* single: one request per record, beside a consume-only Faust agent (the worker's Faust
  settings, the same records): the floor of anything built on a Faust agent.
* batched: `--batch` requests per record.

Both beside a raw aiokafka consume-evaluate-produce pipe (no Faust, the same decoding,
engine and encoding, and the worker's own client settings: a producer with `acks=all`,
`linger_ms=2`, 256 KiB batches, no idempotence as the bench's worker; a consumer handed at
most 2,000 records per fetch, 10 ms fetch wait), the headline reference of both scenarios;
every request asks for the same three flags (`ASKED`).

Every pipeline runs alone in its own process, from the same start offsets (a consumer group
whose offsets we commit before it starts, or an explicit seek), and the clock runs from the
first output record's creation (the producer's timestamp: when the pipeline handled its
first record) until this process has read the last output: rate = outputs after the first /
that time. Process start and the group rebalance are outside the clock; the bench consumer
that reads the outputs is inside it. Every pipeline runs `--rounds` (3) times on the same
records, the rounds interleaved (each round runs every pipeline once, starting one further
along), and each figure is the median of its rounds.

    .venv/bin/python benchmarks/bench_kafka_eval.py [--requests 60000] [--batched-requests 300000]
        [--batch 100] [--rounds 3] [--quick] [--profile DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agents.evaluations import MAX_POLL_RECORDS  # noqa: E402
from app.engine import compile_flag, evaluate  # noqa: E402
from app.engine.model import CompiledFlag  # noqa: E402
from app.evaluation.records import (  # noqa: E402
    Request,
    Requests,
    decode_requests,
    encode_requests,
    encode_results,
    error_json,
    flag_json,
    result_json,
)
from app.infra.broker import free_port, start_broker, stop  # noqa: E402
from app.infra.topics import Topics  # noqa: E402
from tests.conftest import Worker, flag  # noqa: E402

PARTITIONS = 8  # FLAGSTREAM_EVALUATION_PARTITIONS' default, for requests and results
# Every worker (a fresh group each round) and the references on one set of topics.
TOPICS = Topics.named("bench")
ON_THE_TOPICS = {"FLAGSTREAM_TOPIC_PREFIX": TOPICS.prefix}
ENVIRONMENT = "bench"
FLAGS: dict[str, dict[str, Any]] = {
    "banner": flag("on"),
    "by-email": flag(
        "off", targeting={"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on", "off"]}
    ),
    "split": flag(
        "off", targeting={"fractional": [{"var": "targetingKey"}, ["on", 50], ["off", 50]]}
    ),
}
ASKED = list(FLAGS)  # every request asks for these three flags by key
# The worker's producer for results (agents/evaluations.py, `EvaluationRequests.on_start`),
# with idempotence off as tests.conftest.Worker starts it: the raw pipe produces alike.
WORKER_PRODUCER = {"acks": "all", "linger_ms": 2, "max_batch_size": 256 * 1024}
WORKER = "flagstream worker (agents/evaluations.py)"
RAW = "raw aiokafka consume-evaluate-produce (reference)"
FAUST = "Faust agent, consume only (reference)"


def context(i: int) -> dict[str, Any]:
    return {"targetingKey": f"user-{i}", "email": f"u{i}@{'example.com' if i % 3 else 'x.org'}"}


# -- the pipelines' processes ------------------------------------------------------------------


def faust_consume_only(brokers: str, group: str, count: int) -> None:
    """A Faust agent that only counts, with the worker's Faust settings (app/main.py).

    It writes two records to `evaluation-results`, at its first and its `count`th record,
    so the bench times it exactly as it times the worker.
    """
    import faust

    from app.infra.fetch_wait import bound_fetch_wait

    bound_fetch_wait(10)
    app = faust.App(
        group,
        broker=f"kafka://{brokers}",
        datadir=tempfile.mkdtemp(prefix="bench-faust-"),
        autodiscover=False,
        web_enabled=False,
        broker_rebalance_timeout=3,
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
        topic_disable_leader=True,
        producer_acks=-1,
    )
    topic = app.topic(TOPICS.evaluation_requests, key_serializer="raw", value_serializer="raw")
    seen = 0

    @app.agent(topic)
    async def consume(stream: Any) -> None:
        nonlocal seen
        async for _ in stream:
            seen += 1
            if seen in (1, count):
                await app.producer.send_and_wait(
                    TOPICS.evaluation_results, None, b"mark", 0, None, None
                )

    sys.argv = ["bench", "worker", "-l", "info"]
    app.main()


def engine_answers(compiled: dict[str, CompiledFlag], raw: bytes | None) -> list[bytes]:
    """The result records for the request record `raw`: what the worker answers, by the engine
    alone."""
    decoded = decode_requests(raw, TOPICS.evaluation_results)
    if not isinstance(decoded, Requests):
        return []
    now = time.time()
    results = []
    for item in decoded.items:
        if isinstance(item, Request):
            flags = []
            for key in item.flags if item.flags is not None else list(compiled):
                resolution = evaluate(compiled[key], item.context, int(now), key)
                flags.append(flag_json(key, None, resolution))
            results.append(result_json(item, flags, now))
        else:
            results.append(error_json(item, now))
    return encode_results(results, decoded.batch)


def raw_pipe(brokers: str, starts: dict[int, int], count: int) -> None:
    """Consume, evaluate with the engine, produce: no Faust, the same records in and out, and
    the worker's producer and fetch settings, so the difference is the worker's own work."""
    compiled: dict[str, CompiledFlag] = {}
    for key, definition in FLAGS.items():
        result = compile_flag(key, definition)
        assert isinstance(result, CompiledFlag)
        compiled[key] = result

    async def run() -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=brokers, enable_auto_commit=False, fetch_max_wait_ms=10
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=brokers, enable_idempotence=False, **WORKER_PRODUCER
        )
        await consumer.start()
        await producer.start()
        tps = {p: TopicPartition(TOPICS.evaluation_requests, p) for p in starts}
        consumer.assign(list(tps.values()))
        for p, offset in starts.items():
            consumer.seek(tps[p], offset)
        done = 0
        while done < count:
            fetched = await consumer.getmany(timeout_ms=100, max_records=MAX_POLL_RECORDS)
            for records in fetched.values():
                for record in records:
                    for value in engine_answers(compiled, record.value):
                        await producer.send(TOPICS.evaluation_results, value, key=record.key)
                    done += 1
        await producer.flush()
        await producer.stop()
        await consumer.stop()

    asyncio.run(run())


# -- the bench -------------------------------------------------------------------------------


class Outputs(threading.Thread):
    """Reads `evaluation-results` from its current end; times the first and last record."""

    def __init__(self, brokers: str, expected: int, marker: bytes) -> None:
        super().__init__(daemon=True)
        self.brokers = brokers
        self.marker = marker  # only records containing it count: this scenario's outputs
        self.expected = expected
        self.positioned = threading.Event()
        self.count = 0
        self.first = self.last = 0.0
        self.sample: bytes = b""

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.brokers,
            enable_auto_commit=False,
            fetch_max_wait_ms=10,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await consumer.start()
        tps = [TopicPartition(TOPICS.evaluation_results, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        # The embedded broker's end offset can fall short of the last record (see README), so
        # the tail of the previous pipeline's output may come first: skip what predates us.
        since_ms = int(time.time() * 1000)
        self.positioned.set()
        deadline = time.monotonic() + 600
        while self.count < self.expected and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=100, max_records=10000)).values():
                records = [
                    r
                    for r in batch
                    if r.timestamp >= since_ms and r.value and self.marker in r.value
                ]
                if not records:
                    continue
                if not self.count:
                    # When the pipeline handled its first record: the producer stamps a
                    # record when it is handed over (same host, same clock as ours).
                    self.first = min(r.timestamp for r in records) / 1000
                self.count += len(records)
                self.last = time.time()
                self.sample = records[-1].value or b""
        await consumer.stop()


def timed(
    brokers: str, expected: int, marker: bytes, start: Callable[[], Callable[[], None]]
) -> tuple[float, Outputs]:
    """Run one pipeline (`start` returns its stopper); seconds from first to last output."""
    outputs = Outputs(brokers, expected, marker)
    outputs.start()
    outputs.positioned.wait(30)
    stopper = start()
    try:
        outputs.join(600)
    finally:
        stopper()
    if outputs.count < expected:
        raise RuntimeError(f"only {outputs.count} of {expected} outputs arrived")
    return outputs.last - outputs.first, outputs


async def _commit_group(brokers: str, group: str, offsets: dict[int, int]) -> None:
    """Make a consumer group start exactly at `offsets` (it has no members yet)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = {p: TopicPartition(TOPICS.evaluation_requests, p) for p in offsets}
        consumer.assign(list(tps.values()))
        await consumer.commit({tps[p]: offset for p, offset in offsets.items()})
    finally:
        await consumer.stop()


async def _produce(brokers: str, records: list[tuple[bytes, bytes]]) -> dict[int, int]:
    """Produce `records`; return the offset of the first one in each partition.

    From the produce acknowledgements, not the end offsets before: the embedded broker can
    report an end offset short of the last record, which would replay an older tail.
    """
    producer = AIOKafkaProducer(bootstrap_servers=brokers, linger_ms=20, max_batch_size=1024 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(TOPICS.evaluation_requests, v, key=k) for k, v in records]
        starts: dict[int, int] = {}
        for metadata in await asyncio.gather(*futures):
            starts[metadata.partition] = min(
                metadata.offset, starts.get(metadata.partition, metadata.offset)
            )
        return starts
    finally:
        await producer.stop()


def spawn(args: list[str], log: Path) -> Callable[[], None]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, __file__, *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )
    return lambda: stop(process, timeout_s=20)


def profiled(pid: int, out: Path | None) -> subprocess.Popen[bytes] | None:
    if out is None:
        return None
    return subprocess.Popen(
        ["py-spy", "record", "-p", str(pid), "-o", str(out), "-f", "speedscope", "-r", "200"],
        stdout=out.with_suffix(".log").open("ab"),
        stderr=subprocess.STDOUT,
    )


def run_scenario(
    brokers: str,
    workdir: Path,
    name: str,
    records: list[tuple[bytes, bytes]],
    options: argparse.Namespace,
    faust_reference: bool,
) -> dict[str, list[float]]:
    """Pre-produce `records`, then time every pipeline on them in interleaved rounds:
    {pipeline: [seconds of each round]}."""
    starts = asyncio.run(_produce(brokers, records))
    assert len(starts) == PARTITIONS, "every partition needs requests: more records"
    count = len(records)
    marker = f'"request_id":"{name[0]}'.encode()  # s… for single, b… for batched requests

    def faust(round_: int) -> float:
        group = f"bench-faust-consume-{name}-{round_}"
        asyncio.run(_commit_group(brokers, group, starts))
        args = ["faust-consume", brokers, group, str(count)]
        seconds, _ = timed(brokers, 2, b"mark", lambda: spawn(args, workdir / f"{group}.log"))
        return seconds

    def worker(round_: int) -> float:
        app_id = f"bench-flagstream-{name}-{round_}"
        asyncio.run(_commit_group(brokers, f"{app_id}-evaluations", starts))  # the worker's group
        profile = (
            options.profile / f"worker-{name}.json" if options.profile and not round_ else None
        )
        seconds, outputs = timed(brokers, count, marker, lambda: start_worker(app_id, profile))
        sample = json.loads(outputs.sample)
        entries = sample.get("results", [sample])
        assert all(e["error"] is None and len(e["flags"]) == len(ASKED) for e in entries), sample
        return seconds

    def raw(round_: int) -> float:
        args = ["raw-pipe", brokers, json.dumps(starts), str(count)]
        log = workdir / f"raw-{name}-{round_}.log"
        seconds, _ = timed(brokers, count, marker, lambda: spawn(args, log))
        return seconds

    def start_worker(app_id: str, profile: Path | None) -> Callable[[], None]:
        worker = Worker(brokers, workdir / app_id, app_id, **ON_THE_TOPICS).start()
        assert worker.process is not None
        spy = profiled(worker.process.pid, profile)

        def stopper() -> None:
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
                spy.wait(60)
            worker.stop()

        return stopper

    pipelines: list[tuple[str, Callable[[int], float]]] = [(WORKER, worker), (RAW, raw)]
    if faust_reference:
        pipelines.insert(0, (FAUST, faust))
    timings: dict[str, list[float]] = {label: [] for label, _ in pipelines}
    for round_ in range(options.rounds):
        shift = round_ % len(pipelines)  # who goes first moves on each round
        for label, run in pipelines[shift:] + pipelines[:shift]:
            timings[label].append(run(round_))
            print(f"{name} round {round_ + 1}: {label}: {timings[label][-1]:.2f} s", flush=True)
    return timings


def report(
    title: str, timings: dict[str, list[float]], records: int, per_record: int, unit: str
) -> dict[str, Any]:
    """Print one scenario's table and ratios (markdown); return them for the JSON summary."""
    # Rate over the outputs after the first (the clock starts at the first output).
    rates = {
        label: [(records - 1) * per_record / seconds for seconds in runs]
        for label, runs in timings.items()
    }
    medians = {label: statistics.median(runs) for label, runs in rates.items()}
    print(f"\n{title} ({len(ASKED)} flags per request), median of {len(rates[WORKER])} rounds\n")
    print(f"| pipeline | records | median s | {unit} (median) | each round |")
    print("|---|---:|---:|---:|---|")
    for label, runs in rates.items():
        seconds = statistics.median(timings[label])
        each = " / ".join(f"{rate:,.0f}" for rate in runs)
        print(f"| {label} | {records:,} | {seconds:.2f} | {medians[label]:,.0f} | {each} |")
    ratios = {
        f"flagstream / {label}": medians[WORKER] / medians[label]
        for label in rates
        if label != WORKER
    }
    per_round = [ours / raw for ours, raw in zip(rates[WORKER], rates[RAW], strict=True)]
    print()
    for label, ratio in ratios.items():
        print(f"{label}: {ratio:.2f}")
    print(f"flagstream / raw pipe, each round: {' / '.join(f'{r:.2f}' for r in per_round)}")
    return {"records": records, "rates": rates, "medians": medians, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=60_000, help="single-request records")
    parser.add_argument("--batched-requests", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=100, help="requests per batched record")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per pipeline")
    parser.add_argument(
        "--quick", action="store_true", help="10,000 single and 50,000 batched requests"
    )
    parser.add_argument("--profile", type=Path, help="py-spy the worker into this directory")
    parser.add_argument("--json", type=Path, help="also write the figures and ratios here")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.batched_requests = 10_000, 50_000
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    port = free_port()
    brokers = f"127.0.0.1:{port}"
    workdir = Path(tempfile.mkdtemp(prefix="bench-kafka-eval-"))
    broker = start_broker("127.0.0.1", port)
    try:
        # A worker creates the topics and writes the flags, then leaves: nobody reads yet.
        setup = Worker(brokers, workdir / "setup", "bench-setup", **ON_THE_TOPICS).start()
        try:
            admin = setup.admin()
            for key, definition in FLAGS.items():
                admin.put(ENVIRONMENT, key, definition)
        finally:
            setup.stop()

        singles = [
            (
                f"user-{i}".encode(),
                encode_requests([(f"s{i}", ENVIRONMENT, context(i), ASKED)]),
            )
            for i in range(args.requests)
        ]
        single = run_scenario(brokers, workdir, "single", singles, args, True)
        batches = [
            (
                f"user-{i}".encode(),
                encode_requests(
                    [
                        (f"b{i}-{j}", ENVIRONMENT, context(i * args.batch + j), ASKED)
                        for j in range(args.batch)
                    ]
                ),
            )
            for i in range(args.batched_requests // args.batch)
        ]
        batched = run_scenario(brokers, workdir, "batched", batches, args, False)
    finally:
        stop(broker)

    print(
        f"\nmachine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}; "
        f"logs in {workdir}"
    )
    summary = {
        "single": report("one request per record", single, len(singles), 1, "records/s"),
        "batched": report(
            f"{args.batch} requests per record", batched, len(batches), args.batch, "requests/s"
        ),
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "faust-consume":
        faust_consume_only(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "raw-pipe":
        raw_pipe(
            sys.argv[2],
            {int(p): o for p, o in json.loads(sys.argv[3]).items()},
            int(sys.argv[4]),
        )
    else:
        main()
