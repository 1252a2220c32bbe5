"""What one empty Kafka fetch costs the embedded broker and the client, and why.

Issue 11 item 6: an idle worker's CPU and the broker's are, on Tansu (which holds every fetch
for its full wait), its fetches times the cost of one. This measures that cost, so the lever
is known before anything is cut:

1. broker CPU per empty fetch, by partitions in the fetch (1, 4, 16) and by concurrent
   connections each fetching (1, 4): raw `FetchRequest`s sent back to back with aiokafka's
   low-level client, the broker's CPU read from /proc;
2. the same fetches' cost on the sending side (aiokafka's client, no consumer);
3. one `AIOKafkaConsumer` tailing 4 empty partitions (its own process): its CPU per fetch,
   the library's whole fetch machinery (what every consumer of a worker pays);
4. whether the broker answers a waiting fetch early when a record arrives (Apache Kafka does):
   a fetch with a 1,000 ms wait, a record produced 100 ms into it.

    .venv/bin/python benchmarks/bench_fetch_cost.py [--seconds 5] [--wait-ms 10] [--quick]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from aiokafka.client import AIOKafkaClient  # noqa: E402
from aiokafka.protocol.fetch import FetchRequest  # noqa: E402

from app.infra.broker import free_port, start_broker, stop  # noqa: E402

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
TOPIC = "fetch-cost"
PARTITIONS = 16


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


async def create_topic(brokers: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
    finally:
        await admin.close()


async def fetch_loop(
    brokers: str, partitions: int, wait_ms: int, until: float, counts: list[int]
) -> None:
    """Send empty fetches back to back on one connection until `until`."""
    client = AIOKafkaClient(bootstrap_servers=brokers)
    await client.bootstrap()
    try:
        await client._maybe_wait_metadata()
        node = client.cluster.leader_for_partition(TopicPartition(TOPIC, 0))
        topics = [(TOPIC, [(p, 0, 1 << 20) for p in range(partitions)])]
        request = FetchRequest(wait_ms, 1, 50 << 20, 0, topics)
        while time.monotonic() < until:
            await client.send(node, request)
            counts[0] += 1
    finally:
        await client.close()


async def raw_fetch_cost(
    brokers: str, broker_pid: int, partitions: int, connections: int, wait_ms: int, seconds: float
) -> dict[str, float]:
    """Broker and client CPU ms per empty fetch, fetches/s, for one shape of fetch."""
    counts = [0]
    broker_before, client_before = cpu_s(broker_pid), time.process_time()
    started = time.monotonic()
    until = started + seconds
    await asyncio.gather(
        *(fetch_loop(brokers, partitions, wait_ms, until, counts) for _ in range(connections))
    )
    elapsed = time.monotonic() - started
    fetches = max(1, counts[0])
    return {
        "partitions": partitions,
        "connections": connections,
        "fetches_per_s": fetches / elapsed,
        "broker_ms_per_fetch": 1000 * (cpu_s(broker_pid) - broker_before) / fetches,
        "client_ms_per_fetch": 1000 * (time.process_time() - client_before) / fetches,
        "broker_cpu_percent": 100 * (cpu_s(broker_pid) - broker_before) / elapsed,
    }


def consumer_process(brokers: str, wait_ms: int, seconds: float) -> None:
    """Child: an AIOKafkaConsumer tailing 4 empty partitions; prints fetches and CPU s."""

    async def run() -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=brokers, enable_auto_commit=False, fetch_max_wait_ms=wait_ms
        )
        await consumer.start()
        consumer.assign([TopicPartition(TOPIC, p) for p in range(4)])
        fetcher: Any = consumer._fetcher
        count = [0]
        original = fetcher._proc_fetch_request

        async def counted(*args: Any) -> bool:
            count[0] += 1
            result: bool = await original(*args)
            return result

        fetcher._proc_fetch_request = counted
        await consumer.getmany(timeout_ms=1000)  # start-up: metadata, offsets
        count[0], before, started = 0, time.process_time(), time.monotonic()
        while time.monotonic() - started < seconds:
            await consumer.getmany(timeout_ms=1000)
        elapsed = time.monotonic() - started
        cpu = time.process_time() - before
        await consumer.stop()
        print(json.dumps({"fetches": count[0], "cpu_s": cpu, "elapsed_s": elapsed}), flush=True)

    asyncio.run(run())


def consumer_cost(brokers: str, broker_pid: int, wait_ms: int, seconds: float) -> dict[str, float]:
    broker_before = cpu_s(broker_pid)
    command = [sys.executable, __file__, "--consumer", brokers, str(wait_ms), str(seconds)]
    out = subprocess.run(command, capture_output=True, check=True, timeout=seconds + 60)
    broker_cpu = cpu_s(broker_pid) - broker_before  # includes its start-up: an upper bound
    figures = json.loads(out.stdout.decode().strip().splitlines()[-1])
    fetches = max(1, figures["fetches"])
    return {
        "wait_ms": wait_ms,
        "fetches_per_s": fetches / figures["elapsed_s"],
        "consumer_ms_per_fetch": 1000 * figures["cpu_s"] / fetches,
        "consumer_cpu_percent": 100 * figures["cpu_s"] / figures["elapsed_s"],
        "broker_ms_per_fetch_upper": 1000 * broker_cpu / fetches,
    }


async def early_answer(brokers: str) -> dict[str, float]:
    """ms a 1,000 ms fetch takes when a record lands 100 ms into it (Kafka: ~100)."""
    client = AIOKafkaClient(bootstrap_servers=brokers)
    await client.bootstrap()
    producer = AIOKafkaProducer(bootstrap_servers=brokers)
    await producer.start()
    try:
        await client._maybe_wait_metadata()
        node = client.cluster.leader_for_partition(TopicPartition(TOPIC, 0))
        sent = await producer.send_and_wait(TOPIC, b"x", partition=0)
        offset = sent.offset + 1
        request = FetchRequest(1000, 1, 50 << 20, 0, [(TOPIC, [(0, offset, 1 << 20)])])

        async def later() -> None:
            await asyncio.sleep(0.1)  # the stimulus' timing, not a synchronisation
            await producer.send_and_wait(TOPIC, b"y", partition=0)

        started = time.monotonic()
        _, response = await asyncio.gather(later(), client.send(node, request))
        took = 1000 * (time.monotonic() - started)
        got = len(response.topics[0][1][0][-1] or b"")
        return {"fetch_ms": took, "record_bytes_in_answer": got}
    finally:
        await producer.stop()
        await client.close()


async def measure(args: argparse.Namespace, brokers: str, broker_pid: int) -> dict[str, Any]:
    await create_topic(brokers)
    await asyncio.sleep(1)
    idle_before = cpu_s(broker_pid)
    await asyncio.sleep(args.seconds)
    result: dict[str, Any] = {
        "broker_alone_cpu_percent": 100 * (cpu_s(broker_pid) - idle_before) / args.seconds,
        "raw": [],
    }
    for connections in (1, 4):
        for partitions in (1, 4, 16):
            figures = await raw_fetch_cost(
                brokers, broker_pid, partitions, connections, args.wait_ms, args.seconds
            )
            result["raw"].append(figures)
            print(json.dumps({k: round(v, 3) for k, v in figures.items()}), flush=True)
    result["early_answer"] = await early_answer(brokers)
    return result


def report(result: dict[str, Any], wait_ms: int) -> None:
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}; fetch wait {wait_ms} ms")
    print(f"broker alone: {result['broker_alone_cpu_percent']:.1f}% of a core")
    print("\n| connections | partitions per fetch | fetches/s | broker CPU ms/fetch |", end="")
    print(" client CPU ms/fetch (low-level client) | broker CPU % |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in result["raw"]:
        print(
            f"| {r['connections']} | {r['partitions']} | {r['fetches_per_s']:.1f} "
            f"| {r['broker_ms_per_fetch']:.3f} | {r['client_ms_per_fetch']:.3f} "
            f"| {r['broker_cpu_percent']:.1f} |"
        )
    print("\n| AIOKafkaConsumer, 4 partitions | fetches/s | consumer CPU ms/fetch |", end="")
    print(" consumer CPU % | broker CPU ms/fetch (upper bound) |\n|---|---:|---:|---:|---:|")
    for c in result["consumer"]:
        print(
            f"| wait {c['wait_ms']} ms | {c['fetches_per_s']:.1f} "
            f"| {c['consumer_ms_per_fetch']:.3f} | {c['consumer_cpu_percent']:.1f} "
            f"| {c['broker_ms_per_fetch_upper']:.3f} |"
        )
    early = result["early_answer"]
    print(
        f"\na 1,000 ms fetch with a record produced 100 ms into it answered after "
        f"{early['fetch_ms']:.0f} ms ({early['record_bytes_in_answer']} bytes of records)"
    )


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--consumer":
        consumer_process(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0, help="each measurement")
    parser.add_argument("--wait-ms", type=int, default=10, help="fetch max wait")
    parser.add_argument("--quick", action="store_true", help="2 s measurements")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 2.0
    port = free_port()
    broker = start_broker("127.0.0.1", port)
    brokers = f"127.0.0.1:{port}"
    try:
        result = asyncio.run(measure(args, brokers, broker.pid))
        result["consumer"] = [
            consumer_cost(brokers, broker.pid, wait, args.seconds * 2)
            for wait in (args.wait_ms, 100)
        ]
    finally:
        stop(broker)
    report(result, args.wait_ms)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
