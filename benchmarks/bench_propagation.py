"""How long a flag change takes to reach a second worker, beside the broker's own floor.

One run: the embedded broker, two workers in one consumer group. Each change is written
through worker A's admin API; we time (1) until A answers 200 (produced, decided, applied on
A) and (2) until worker B's change stream delivers it. The reference, measured in the same run
on the same broker, is one raw aiokafka produce → consume hop with the same fetch wait: a
change needs at least three such hops (command, changelog to A, changelog to B).

    .venv/bin/python benchmarks/bench_propagation.py [--changes 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.infra.broker import free_port, start_broker, stop
from tests.conftest import EventStream, Worker, flag


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def raw_hop_ms(brokers: str, count: int) -> list[float]:
    """Produce one record, wait until a group-less consumer has it: the broker's floor."""

    async def run() -> list[float]:
        producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all")
        consumer = AIOKafkaConsumer(bootstrap_servers=brokers, fetch_max_wait_ms=10)
        await producer.start()
        await consumer.start()
        tp = TopicPartition("bench-hop", 0)
        await producer.send_and_wait("bench-hop", b"warm", partition=0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            await producer.send_and_wait("bench-hop", b"x", partition=0)
            while not await consumer.getmany(tp, timeout_ms=1000):
                pass
            samples.append((time.perf_counter() - started) * 1000)
        await consumer.stop()
        await producer.stop()
        return samples

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=300)
    args = parser.parse_args()
    port = free_port()
    brokers = f"127.0.0.1:{port}"
    broker = start_broker("127.0.0.1", port)
    workdir = Path(tempfile.mkdtemp(prefix="bench-propagation-"))
    a = Worker(brokers, workdir / "a", "bench").start()
    b = Worker(brokers, workdir / "b", "bench").start()
    try:
        admin = a.admin()
        warm_seq = admin.put("bench", "warmup", flag())["seq"]
        events = EventStream(f"{b.url}/api/v1/environments/bench/stream")
        # The snapshot, and the warm-up change if B had not applied it when the stream opened.
        while events.next()[0] < warm_seq:
            pass
        arrivals: dict[int, float] = {}

        def read() -> None:
            for _ in range(args.changes):
                seq, _, _ = events.next()
                arrivals[seq] = time.perf_counter()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        sent: dict[int, float] = {}
        acked_ms = []
        for i in range(args.changes):
            started = time.perf_counter()
            result = admin.put("bench", f"f{i % 20}", flag(default="on" if i % 2 else "off"))
            acked_ms.append((time.perf_counter() - started) * 1000)
            sent[result["seq"]] = started
        reader.join(timeout=30)
        to_b_ms = [(arrivals[seq] - sent[seq]) * 1000 for seq in sent if seq in arrivals]
        floor_ms = raw_hop_ms(brokers, args.changes)
    finally:
        a.stop()
        b.stop()
        stop(broker)

    print(f"changes: {args.changes}, delivered to worker B: {len(to_b_ms)}")
    print("| path | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|")
    for name, values in (
        ("write acknowledged by worker A (PUT → 200)", acked_ms),
        ("change on worker B's stream (PUT start → SSE event)", to_b_ms),
        ("reference: one raw aiokafka produce → consume hop", floor_ms),
    ):
        print(
            f"| {name} | {statistics.median(values):.1f} | {percentile(values, 0.99):.1f} "
            f"| {max(values):.1f} |"
        )
    ratio = statistics.median(to_b_ms) / statistics.median(floor_ms)
    print(f"\npropagation to B, p50 / one raw hop p50: {ratio:.1f}x")


if __name__ == "__main__":
    main()
