"""A fresh worker starting with many flags: time to ready, first answers, memory.

One run, one embedded broker. `--environments` (3) environments of `--flags` (10,000)
generated flags each (`benchmarks/flag_corpus.py`: realistic rules) are written straight to
`flags-changelog` as the decider writes them, then every round (`--rounds`, 3) measures:

* reference: a raw aiokafka consumer (no group, the worker's fetch wait and records per
  fetch) reading the whole changelog from the beginning, in this process;
* a `FlagReplication` in this process on an empty table: started to ready (its start fences
  read), the table's catch-up without the rest of a worker beside it;
* a fresh worker (empty data dir) started as `flagstream worker`: (a) the time from launch
  to `/readyz` 200, and the worker's own log of it: the table's catch-up (consume and apply,
  up to reading its start fences). Ready does not wait for compiling: the flags compile in
  the background after ready (its log: how long until the queue first drained), and a
  request for a flag not compiled yet compiles that one flag;
* (c) the first `--evaluations` (10,000) OFREP single-flag POSTs after ready, one at a time
  over a keep-alive connection per environment, random flags across the environments
  (nearly all first evaluations of their flag), then the same requests again (warm: the
  reference for the latency);
* (d) the worker's RSS after ready and after the evaluations.

A worker started on the empty changelog before the flags are written gives the boot time
and RSS of a worker with no flags. Figures are medians of the rounds; the ratio is the
worker's catch-up (its log) over the raw consume, and ready-from-launch minus the empty
worker's boot over the raw consume.

    .venv/bin/python benchmarks/bench_startup.py [--flags 10000] [--environments 3]
        [--evaluations 10000] [--rounds 3] [--quick] [--no-headers] [--json out.json]

The records carry the meta header the decider writes (replicas apply them without parsing
their values); `--no-headers` writes them as records from before it (decoded whole).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import http.client
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.infra.broker import free_port, start_broker, stop
from app.infra.metrics import Metrics
from app.infra.records import AppliedChange, ChangeOp, changelog_headers, dumps
from app.infra.settings import Settings
from app.infra.topics import Topics, ensure_topics, partition_for
from benchmarks.flag_corpus import generated_flags
from tables.flags import FlagTable
from tables.replication import FETCH_MAX_RECORDS as MAX_RECORDS  # per fetch, as the worker
from tables.replication import FlagReplication
from tests.conftest import Worker

APP_ID = "bench-startup"  # the worker's, and the prefix of the topics written for it
FETCH_WAIT_MS = 10  # the tests' and benchmarks' worker (tests/conftest.py Worker)
CAUGHT_UP = re.compile(r"flag table caught up in ([\d.]+)s")
PERSISTED = re.compile(r"flag table wrote \d+ caught-up changes in ([\d.]+)s")
COMPILED = re.compile(r"compiled (\d+) flags of \d+ environments in ([\d.]+)s in the background")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def environments(count: int) -> list[str]:
    return [f"env-{i}" for i in range(count)]


def sdk_keys(names: list[str]) -> dict[str, str]:
    return {name: f"bench-key-{name}" for name in names}


# -- the changelog ----------------------------------------------------------------------------


def write_changelog(
    settings: Settings, names: list[str], flags: int, seed: int, *, headers: bool = True
) -> int:
    """Every generated flag of every environment as a decided change, with the meta header
    the decider writes (`headers`; without: as records from before it); how many records."""

    async def run() -> int:
        await ensure_topics(settings)
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap, linger_ms=20, max_batch_size=512 * 1024
        )
        await producer.start()
        try:
            futures = []
            now = time.time()
            for n, environment in enumerate(names):
                partition = partition_for(environment, settings.flag_change_partitions)
                corpus = generated_flags(flags, seed + n)
                for seq, (key, definition) in enumerate(corpus.items(), start=1):
                    change = AppliedChange(
                        str(uuid.uuid4()),
                        environment,
                        key,
                        ChangeOp.PUT,
                        seq,
                        1,
                        definition,
                        "bench",
                        now,
                        now,
                    )
                    value = dumps(change.to_json())
                    futures.append(
                        await producer.send(
                            Topics.of(settings).flags_changelog,
                            value,
                            key=environment.encode(),
                            partition=partition,
                            headers=changelog_headers(change) if headers else None,
                        )
                    )
            await asyncio.gather(*futures)
            return len(futures)
        finally:
            await producer.stop()

    return asyncio.run(run())


def replica_catch_up_s(settings: Settings, data_dir: Path) -> float:
    """Seconds for a `FlagReplication` in this process, on an empty table, from started to
    ready: the table's catch-up alone (no compiler, web server or agents beside it)."""

    async def run() -> float:
        table = FlagTable(
            data_dir,
            history_depth=settings.history_depth,
            stream_depth=settings.stream_depth,
            change_id_depth=settings.change_id_depth,
        )
        as_the_worker = dataclasses.replace(settings, fetch_max_wait_ms=FETCH_WAIT_MS)
        replication = FlagReplication(as_the_worker, table, Metrics(CollectorRegistry()))
        await replication.start()
        started = time.perf_counter()
        try:
            await replication.ready.wait()
            return time.perf_counter() - started
        finally:
            await replication.stop()

    try:
        return asyncio.run(run())
    finally:
        gc.unfreeze()  # the catch-up froze what it loaded; this process carries on
        gc.collect()


def raw_consume_s(settings: Settings) -> tuple[float, int]:
    """Seconds for a raw consumer to read the whole changelog, and how many records.

    The records are counted first by an untimed read to the end (it also warms the broker's
    cache for the timed read, as the previous round did for the worker): the timed read stops
    at that count, so no idle wait for "nothing more" is on its clock (the embedded broker's
    end offsets may stop short of the last batch's records, so they cannot say).
    """
    total = asyncio.run(_read(settings, None))[1]
    return asyncio.run(_read(settings, total))


async def _read(settings: Settings, expected: int | None) -> tuple[float, int]:
    """Read the changelog from the start: until `expected` records, or until 1 s brings none."""
    started = time.perf_counter()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=FETCH_WAIT_MS,
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(Topics.of(settings).flags_changelog, p)
            for p in range(settings.flag_change_partitions)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        read = 0
        idle_since = time.perf_counter()
        while expected is None or read < expected:
            batches = await consumer.getmany(timeout_ms=100, max_records=MAX_RECORDS)
            read += sum(len(records) for records in batches.values())
            if batches:
                idle_since = time.perf_counter()
            elif expected is None and time.perf_counter() - idle_since > 1.0:
                break
        return time.perf_counter() - started, read
    finally:
        await consumer.stop()


# -- a worker ---------------------------------------------------------------------------------


def start_worker(brokers: str, data_dir: Path, names: list[str]) -> tuple[Worker, float]:
    """A fresh worker, and the seconds from launch to `/readyz` 200 (polled every 20 ms)."""
    keys = ",".join(f"{key}={name}" for name, key in sdk_keys(names).items())
    worker = Worker(brokers, data_dir, APP_ID, FLAGSTREAM_SDK_KEYS=keys)
    started = time.perf_counter()
    worker.launch()
    deadline = started + 900
    while time.perf_counter() < deadline:
        assert worker.process is not None
        if worker.process.poll() is not None:
            raise RuntimeError(f"the worker exited:\n{worker.log_tail()}")
        try:
            with urllib.request.urlopen(worker.url + "/readyz", timeout=5) as response:
                if response.status == 200:
                    return worker, time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.02)
    worker.stop()
    raise RuntimeError("the worker was not ready in 15 minutes")


def rss_mb(worker: Worker) -> float:
    assert worker.process is not None
    for line in Path(f"/proc/{worker.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def logged(worker: Worker) -> dict[str, float | None]:
    """What the worker logged of its start: catch-up seconds; the seconds it took after ready
    to write the catch-up to RocksDB; the background compile's seconds and flags once its
    queue first drained (None while it has not)."""
    text = worker.log_path.read_text(errors="replace")
    caught_up = CAUGHT_UP.findall(text)
    persisted = PERSISTED.findall(text)
    compiled = COMPILED.findall(text)
    return {
        "catch_up_s": float(caught_up[-1]) if caught_up else None,
        "persist_after_ready_s": float(persisted[-1]) if persisted else None,
        "background_compile_s": float(compiled[-1][1]) if compiled else None,
        "compiled_in_background": float(compiled[-1][0]) if compiled else None,
    }


def wait_for_compile(worker: Worker, timeout_s: float = 600) -> dict[str, float | None]:
    """`logged` once the background compile has drained its queue (or after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    log = logged(worker)
    while log["background_compile_s"] is None and time.monotonic() < deadline:
        time.sleep(0.1)
        log = logged(worker)
    return log


def evaluations(
    worker: Worker, names: list[str], flags: int, count: int, seed: int
) -> tuple[list[float], list[float]]:
    """Latencies (ms) of `count` single-flag OFREP POSTs, then of the same requests again."""
    rng = random.Random(seed)
    keys = sdk_keys(names)
    plan = [
        (rng.choice(names), f"flag-{rng.randrange(flags):05d}", context(rng)) for _ in range(count)
    ]
    connections = {
        name: http.client.HTTPConnection("127.0.0.1", worker.port, timeout=30) for name in names
    }
    try:
        passes = []
        for _ in range(2):
            took = []
            for environment, key, body in plan:
                connection = connections[environment]
                headers = {
                    "Authorization": f"Bearer {keys[environment]}",
                    "Content-Type": "application/json",
                }
                started = time.perf_counter()
                connection.request("POST", f"/ofrep/v1/evaluate/flags/{key}", body, headers)
                response = connection.getresponse()
                response.read()
                took.append((time.perf_counter() - started) * 1000)
                if response.status != 200:
                    raise RuntimeError(f"{environment}/{key}: {response.status}")
            passes.append(took)
        return passes[0], passes[1]
    finally:
        for connection in connections.values():
            connection.close()


def context(rng: random.Random) -> bytes:
    """An evaluation context with the attributes the corpus's rules read."""
    attributes = {
        "targetingKey": f"user-{rng.randrange(1_000_000)}",
        "email": f"u{rng.randrange(1000)}{rng.choice(['@corp.example', '@example.com'])}",
        "country": rng.choice(["DE", "FR", "US", "JP", "BR"]),
        "tier": rng.choice(["free", "pro", "premium", "enterprise"]),
        "platform": rng.choice(["ios-17", "android-14", "web-chrome"]),
        "appVersion": rng.choice(["1.4.0", "2.3.1", "3.2.0", "4.0.0"]),
        "beta": rng.random() < 0.2,
        "age": rng.randrange(13, 90),
        "user": {"id": f"u{rng.randrange(10_000)}", "tier": "pro"},
    }
    return json.dumps({"context": attributes}).encode()


# -- the run ----------------------------------------------------------------------------------


def one_round(
    brokers: str,
    settings: Settings,
    workdir: Path,
    names: list[str],
    args: argparse.Namespace,
    n: int,
) -> dict[str, Any]:
    consume_s, records = raw_consume_s(settings)
    print(f"round {n}: raw consume of {records} records {consume_s:.2f}s", flush=True)
    replica_s = replica_catch_up_s(settings, workdir / f"replica-{n}")
    print(f"round {n}: a replica in this process caught up in {replica_s:.2f}s", flush=True)
    worker, ready_s = start_worker(brokers, workdir / f"round-{n}", names)
    try:
        rss_ready = rss_mb(worker)
        log = logged(worker)
        print(f"round {n}: ready in {ready_s:.2f}s from launch, log {log}, RSS {rss_ready:.0f} MB")
        first, warm = evaluations(worker, names, args.flags, args.evaluations, args.seed + n)
        rss_after = rss_mb(worker)
        log = wait_for_compile(worker)
    finally:
        worker.stop()
    figures = {
        "raw_consume_s": consume_s,
        "records": records,
        "replica_catch_up_s": replica_s,
        "ready_from_launch_s": ready_s,
        **log,
        "first_p50_ms": statistics.median(first),
        "first_p99_ms": percentile(first, 0.99),
        "first_max_ms": max(first),
        "warm_p50_ms": statistics.median(warm),
        "warm_p99_ms": percentile(warm, 0.99),
        "rss_ready_mb": rss_ready,
        "rss_after_evaluations_mb": rss_after,
    }
    print(
        f"round {n}: first evaluations p50 {figures['first_p50_ms']:.2f} ms, p99 "
        f"{figures['first_p99_ms']:.2f} ms; warm p99 {figures['warm_p99_ms']:.2f} ms",
        flush=True,
    )
    return figures


def median_of(rounds: list[dict[str, Any]], name: str) -> float | None:
    values = [r[name] for r in rounds if r.get(name) is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flags", type=int, default=10_000, help="flags per environment")
    parser.add_argument("--environments", type=int, default=3)
    parser.add_argument("--evaluations", type=int, default=10_000, help="first evaluations")
    parser.add_argument("--rounds", type=int, default=3, help="fresh workers, each measured")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="3 x 1,000 flags, 2,000, 1 round")
    parser.add_argument("--json", type=Path, help="also write the figures and ratios here")
    parser.add_argument(
        "--no-headers",
        action="store_true",
        help="records without the decider's meta header (as written before it): decoded whole",
    )
    args = parser.parse_args()
    if args.quick:
        args.flags, args.evaluations, args.rounds = 1_000, 2_000, 1
    names = environments(args.environments)
    port = free_port()
    brokers = f"127.0.0.1:{port}"
    settings = dataclasses.replace(Settings.from_env(), brokers=(brokers,), topic_prefix=APP_ID)
    workdir = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    broker = start_broker("127.0.0.1", port)
    try:
        asyncio.run(ensure_topics(settings))
        empty, boot_s = start_worker(brokers, workdir / "empty", names)
        boot_rss = rss_mb(empty)
        empty.stop()
        print(f"a worker with no flags: ready in {boot_s:.2f}s from launch, RSS {boot_rss:.0f} MB")
        written = write_changelog(
            settings, names, args.flags, args.seed, headers=not args.no_headers
        )
        print(f"{written} changes written to {Topics.of(settings).flags_changelog}", flush=True)
        rounds = [one_round(brokers, settings, workdir, names, args, n) for n in range(args.rounds)]
    finally:
        stop(broker)

    medians = {name: median_of(rounds, name) for name in rounds[0]}
    consume = medians["raw_consume_s"] or float("nan")
    catch_up = medians["catch_up_s"]
    compile_s = medians["background_compile_s"]
    replica = medians["replica_catch_up_s"]
    summary = {
        "flags": args.flags,
        "environments": args.environments,
        "evaluations": args.evaluations,
        "meta_headers": not args.no_headers,
        "rounds": rounds,
        "medians": medians,
        "empty_worker": {"ready_from_launch_s": boot_s, "rss_mb": boot_rss},
        "ratios": {
            "catch_up / raw consume": None if catch_up is None else catch_up / consume,
            "replica in process / raw consume": None if replica is None else replica / consume,
            "(ready from launch - empty boot) / raw consume": (
                (medians["ready_from_launch_s"] or 0) - boot_s
            )
            / consume,
            "first p99 / warm p99": (medians["first_p99_ms"] or 0) / (medians["warm_p99_ms"] or 1),
        },
    }
    print(
        f"\n{args.environments} x {args.flags:,} flags, {args.evaluations:,} first evaluations, "
        f"median of {args.rounds} round(s), records "
        f"{'without' if args.no_headers else 'with'} the decider's meta header\n"
    )
    print("| measure | value |\n|---|---|")
    rows = [
        ("raw aiokafka consume of the changelog (reference)", f"{consume:.2f} s"),
        ("replica in process, started to ready (fences, consume + apply)", _s(replica)),
        ("worker catch-up = ready, its log (fences, consume + apply)", _s(catch_up)),
        ("its RocksDB writes, after ready in the background", _s(medians["persist_after_ready_s"])),
        ("background compile after ready, until its queue drained", _s(compile_s)),
        ("ready from launch", _s(medians["ready_from_launch_s"])),
        ("empty worker ready from launch (boot)", f"{boot_s:.2f} s"),
        ("first evaluations p50 / p99 / max", _ms(medians, "first")),
        ("warm evaluations p50 / p99 (reference)", _ms(medians, "warm")),
        ("RSS after ready / after evaluations / no flags", _rss(medians, boot_rss)),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")
    print()
    for name, ratio in summary["ratios"].items():
        print(f"{name}: {'n/a' if ratio is None else f'{ratio:.2f}x'}")
    print(
        f"\nmachine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}; "
        f"logs in {workdir}"
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


def _s(value: float | None) -> str:
    return "not logged" if value is None else f"{value:.2f} s"


def _ms(medians: dict[str, float | None], name: str) -> str:
    values = [medians.get(f"{name}_{q}_ms") for q in ("p50", "p99", "max")]
    return " / ".join(f"{v:.2f}" for v in values if v is not None) + " ms"


def _rss(medians: dict[str, float | None], boot: float) -> str:
    ready, after = medians["rss_ready_mb"] or 0, medians["rss_after_evaluations_mb"] or 0
    return f"{ready:.0f} / {after:.0f} / {boot:.0f} MB"


if __name__ == "__main__":
    main()
