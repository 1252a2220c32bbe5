"""Experiment attribution (issue 10): fold throughput, result delay and memory, beside raw.

Three measurements, one run:

* throughput: N exposures and N metric events (subjects ~ N/3, 3 variants, a conversion and
  a mean metric on one experiment flag) are pre-produced in big batches into `exposures` and
  `metric-events` (8 partitions each) before anyone reads them. Then, on the same records, a
  raw aiokafka consumer group (the worker's fetch settings: range assignor, fetch wait,
  max poll records; reads and `orjson`-decodes each record, nothing else) and the worker's
  attribution (`agents/experiments.py`, counted by its /metrics counter
  `flagstream_attribution_records_total{outcome="folded"}`), each with 1 and with 2 processes.
  Each pipeline's progress is sampled over time; "sustained" is the rate between 10% and 90%
  of the records (outside the group join and the tail), "overall" is from the first record
  folded to the last. Every 1- and 2-process pair runs on its own fresh broker: the
  changelog `experiment-state` is one topic for every app id, so a second group on the same
  broker would restore the first one's state and fold nothing.
* result delay: with the one worker caught up and a paced background load (`--rate`
  exposures/s plus as many metric events/s, from another process), a probe (an exposure and
  a `spend` event of 1.0 for a new subject of a second experiment flag) is produced and the
  results endpoint polled until the probe's subject and its event show in the figures; the
  delay runs from the later of the two produce acks to the answer that shows them.
* memory: the worker's RSS (/proc) beside an idle worker's, and the size of its RocksDB
  directory `<data dir>/experiments`, after folding the N/3 subjects; divided per million.

Each figure is printed with the load average at its time (the machine may be shared).

    .venv/bin/python benchmarks/bench_attribution.py [--events 200000] [--probes 50]
        [--rate 7000] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app.experiments.exposures import to_json as exposure_json  # noqa: E402
from app.experiments.metric_events import MetricEvent  # noqa: E402
from app.experiments.metric_events import to_json as event_json  # noqa: E402
from app.infra.broker import free_port, start_broker, stop  # noqa: E402
from app.infra.topics import Topics  # noqa: E402
from tests.conftest import READ_TOKEN, Worker  # noqa: E402

# Every worker (a fresh group each run) and the load on one set of topics.
TOPICS = Topics.named("bench")
ON_THE_TOPICS = {"FLAGSTREAM_TOPIC_PREFIX": TOPICS.prefix}
ENVIRONMENT = "bench"
EXPERIMENT = "checkout"  # the bulk load's experiment flag
PROBE = "probe"  # the delay probes' experiment flag
VARIANTS = ("a", "b", "c")
# The Worker fixture's (the embedded broker never answers early). Under a steady trickle it
# makes every fetch small, so the fold pays its per-batch costs (a changelog ack per
# partition) for a few records: `--fetch-wait-ms 200` measures a batching worker.
FETCH_MAX_WAIT_MS = 200  # the attribution's default (FLAGSTREAM_ATTRIBUTION_FETCH_WAIT_MS)
MAX_POLL_RECORDS = 2000  # agents/experiments.py's
FOLDED = re.compile(r'^flagstream_attribution_records_total\{[^}]*outcome="folded"[^}]*\} (\S+)$')
# The results endpoint is polled this often for a probe: each answer computes the statistics
# on the worker's loop, so polling much faster slows the fold it measures.
POLL_S = 0.05
Record = tuple[bytes, bytes]  # key, value
Timeline = list[tuple[float, int]]  # (unix time, records done)


def experiment_flag(variants: tuple[str, ...]) -> dict[str, Any]:
    share = 100 // len(variants)
    split = [
        [v, share + (100 - share * len(variants) if i == 0 else 0)] for i, v in enumerate(variants)
    ]
    return {
        "state": "ENABLED",
        "variants": {v: v for v in variants},
        "defaultVariant": variants[0],
        "targeting": {"fractional": split},
        "metadata": {"experiment": True, "metric.buy": "conversion", "metric.spend": "mean"},
    }


def load(now: float) -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f} at {time.strftime('%H:%M:%S', time.gmtime(now))}Z"


# -- the records, exactly as the producers write them ---------------------------------------


def exposure_record(experiment: str, subject: str, variant: str, at: float) -> Record:
    value = exposure_json(
        (
            ENVIRONMENT,
            experiment,
            variant,
            1,
            subject,
            at,
            "bench",
            os.urandom(16).hex(),
            experiment,
        )
    )
    return subject.encode(), orjson.dumps(value)


def event_record(subject: str, metric: str, value: float, at: float) -> Record:
    event = MetricEvent(ENVIRONMENT, subject, metric, value, at, os.urandom(16).hex())
    return subject.encode(), orjson.dumps(event_json(event))


def bulk(count: int, subjects: int, seed: int) -> tuple[list[Record], list[Record]]:
    """`count` exposures and `count` metric events of `subjects` people (each in one variant,
    2% seeing another one too), events within the attribution window after the exposures."""
    rng = random.Random(seed)
    start = time.time() - 3600
    exposures, events = [], []
    for n in range(count):
        person = n % subjects
        variant = VARIANTS[person % 3] if rng.random() > 0.02 else rng.choice(VARIANTS)
        exposures.append(exposure_record(EXPERIMENT, f"s{person}", variant, start + n * 1e-3))
    for n in range(count):
        person = rng.randrange(subjects)
        metric = "buy" if rng.random() < 0.3 else "spend"
        value = 1.0 if metric == "buy" else round(rng.uniform(0, 50), 2)
        events.append(event_record(f"s{person}", metric, value, start + 1800 + n * 1e-3))
    return exposures, events


async def _produce(brokers: str, topic: str, records: list[Record]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=brokers, acks="all", linger_ms=50, max_batch_size=1024 * 1024
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def produce(brokers: str, topic: str, records: list[Record]) -> float:
    started = time.perf_counter()
    asyncio.run(_produce(brokers, topic, records))
    return time.perf_counter() - started


# -- the raw reference: a consumer group that reads and decodes -------------------------------


def raw_consumer(brokers: str, group: str, out: Path, fetch_wait_ms: int) -> None:
    """Read both topics in group `group` with the worker's fetch settings, `orjson.loads`
    every value; write (time, records read) every 0.1 s to `out`, until idle for 5 s.

    Records read is the sum over partitions of the highest offset seen + 1, so a record
    read again after a rebalance (no offsets are committed) is not counted twice."""

    async def run() -> dict[str, Any]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=brokers,
            group_id=group,
            partition_assignment_strategy=(RangePartitionAssignor,),
            enable_auto_commit=True,
            auto_commit_interval_ms=500,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=fetch_wait_ms,
            max_poll_records=MAX_POLL_RECORDS,
            rebalance_timeout_ms=3000,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        await consumer.start()
        consumer.subscribe([TOPICS.exposures, TOPICS.metric_events])
        seen: dict[Any, int] = {}
        decoded = 0
        timeline: Timeline = []
        last_read = time.monotonic()
        last_wall = 0.0
        last_note = 0.0
        try:
            while not seen or time.monotonic() - last_read < 5:
                batches = await consumer.getmany(timeout_ms=200)
                for tp, records in batches.items():
                    for record in records:
                        orjson.loads(record.value or b"")
                        decoded += 1
                    seen[tp] = max(seen.get(tp, 0), records[-1].offset + 1)
                    last_read, last_wall = time.monotonic(), time.time()
                now = time.time()
                if batches and now - last_note >= 0.1:
                    timeline.append((now, sum(seen.values())))
                    last_note = now
            timeline.append((last_wall, sum(seen.values())))
        finally:
            await consumer.stop()
        return {"timeline": timeline, "decoded": decoded}

    out.write_text(json.dumps(asyncio.run(run())))


# -- the paced background load -----------------------------------------------------------------


def paced_load(brokers: str, rate: int, subjects: int, out: Path) -> None:
    """`rate` exposures/s and `rate` metric events/s (known and new subjects) until SIGTERM;
    writes the rate it reached to `out`."""
    stopping = False

    def on_term(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)

    async def run() -> dict[str, Any]:
        producer = AIOKafkaProducer(
            bootstrap_servers=brokers, acks="all", linger_ms=5, max_batch_size=1024 * 1024
        )
        await producer.start()
        rng = random.Random(7)
        sent = 0
        started = time.monotonic()
        tick = 0.01
        pending: list[Any] = []
        while not stopping:
            due = int((time.monotonic() - started) * rate) - sent
            now = time.time()
            for _ in range(max(0, due)):
                person = rng.randrange(subjects * 2)  # half known, half new subjects
                subject = f"s{person}"
                key, value = exposure_record(EXPERIMENT, subject, VARIANTS[person % 3], now)
                pending.append(await producer.send(TOPICS.exposures, value, key=key))
                metric = "buy" if rng.random() < 0.3 else "spend"
                key, value = event_record(subject, metric, 1.0, now)
                pending.append(await producer.send(TOPICS.metric_events, value, key=key))
                sent += 1
            if len(pending) > 20000:
                await asyncio.gather(*pending)
                pending = []
            await asyncio.sleep(tick)
        await asyncio.gather(*pending)
        elapsed = time.monotonic() - started
        await producer.stop()
        return {"per_topic_per_s": sent / elapsed, "sent": sent}

    out.write_text(json.dumps(asyncio.run(run())))


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, __file__, *args], cwd=REPO, stdout=output, stderr=subprocess.STDOUT
        )


# -- measuring ---------------------------------------------------------------------------------


def folded(worker: Worker) -> int:
    total = 0.0
    for line in worker.metrics().splitlines():
        match = FOLDED.match(line)
        if match:
            total += float(match.group(1))
    return int(total)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def du_mb(path: Path) -> dict[str, float]:
    """Bytes under `path`, by kind of RocksDB file: sst, the write-ahead log, the rest."""
    sizes = {"sst": 0, "wal": 0, "other": 0}
    for file in path.rglob("*"):
        if file.is_file():
            kind = "sst" if file.suffix == ".sst" else "wal" if file.suffix == ".log" else "other"
            sizes[kind] += file.stat().st_size
    return {kind: size / 2**20 for kind, size in sizes.items()}


@dataclass
class Rate:
    """A pipeline's progress over time, and the rates read off it."""

    name: str
    total: int
    timeline: Timeline
    loads: list[str] = field(default_factory=list)

    def at(self, share: float) -> float:
        """When `share` of the total was done (linear between samples)."""
        goal = share * self.total
        previous = self.timeline[0]
        for sample in self.timeline:
            if sample[1] >= goal:
                if sample[1] == previous[1]:
                    return sample[0]
                fraction = (goal - previous[1]) / (sample[1] - previous[1])
                return previous[0] + fraction * (sample[0] - previous[0])
            previous = sample
        raise ValueError(f"{self.name}: only {self.timeline[-1][1]} of {self.total} done")

    def sustained(self) -> float:
        return 0.8 * self.total / (self.at(0.9) - self.at(0.1))

    def overall(self) -> float:
        first = next(t for t, done in self.timeline if done > 0)
        return self.total / (self.at(1.0) - first)


def raw_rate(brokers: str, processes: int, total: int, workdir: Path, wait_ms: int) -> Rate:
    group = f"bench-raw-{processes}"
    outs = [workdir / f"{group}-{i}.json" for i in range(processes)]
    children = [
        spawn(["raw", brokers, group, str(out), str(wait_ms)], workdir / f"{group}-{i}.log")
        for i, out in enumerate(outs)
    ]
    for child in children:
        child.wait(900)
    merged: list[tuple[float, int, int]] = []
    decoded = 0
    for i, out in enumerate(outs):
        data = json.loads(out.read_text())
        decoded += data["decoded"]
        merged += [(t, i, done) for t, done in data["timeline"]]
    latest = [0] * processes
    timeline: Timeline = []
    for t, i, done in sorted(merged):
        latest[i] = done
        timeline.append((t, sum(latest)))
    rate = Rate(f"raw aiokafka group, {processes} process(es)", total, timeline)
    rate.loads.append(load(time.time()) + f"; decoded {decoded} (re-reads included)")
    return rate


def worker_rate(workers: list[Worker], total: int, timeout_s: float = 900) -> Rate:
    timeline: Timeline = []
    loads = []
    deadline = time.monotonic() + timeout_s
    done = 0
    next_load = 0.0
    while done < total and time.monotonic() < deadline:
        done = sum(folded(w) for w in workers)
        now = time.time()
        timeline.append((now, done))
        if now >= next_load:
            loads.append(load(now))
            next_load = now + 15
        time.sleep(0.25)
    rate = Rate(f"flagstream attribution, {len(workers)} worker(s)", total, timeline, loads)
    loads.append(load(time.time()))
    return rate


# -- the results endpoint ----------------------------------------------------------------------


class Results:
    """GET the results of an experiment over one kept-alive connection."""

    def __init__(self, worker: Worker, experiment: str) -> None:
        parsed = urllib.parse.urlsplit(worker.url)
        self.connection = http.client.HTTPConnection(parsed.hostname or "", parsed.port, timeout=10)
        self.path = f"/api/v1/environments/{ENVIRONMENT}/experiments/{experiment}/results"

    def get(self) -> dict[str, Any]:
        self.connection.request("GET", self.path, headers={"Authorization": f"Bearer {READ_TOKEN}"})
        response = self.connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"results answered {response.status}: {body[:300]!r}")
        answer: dict[str, Any] = json.loads(body)
        return answer


def spend_sum(result: dict[str, Any]) -> float:
    for metric in result["metrics"]:
        if metric["metric"] == "spend":
            return float(sum(v["sum"] for v in metric["variants"]))
    return 0.0


async def _probe_ack(producer: AIOKafkaProducer, subject: str) -> float:
    """Produce a probe's exposure and its event; the monotonic time both are acknowledged."""
    now = time.time()
    key, value = exposure_record(PROBE, subject, "a", now)
    exposed = await producer.send(TOPICS.exposures, value, key=key)
    key, value = event_record(subject, "spend", 1.0, now + 0.001)
    spent = await producer.send(TOPICS.metric_events, value, key=key)
    await asyncio.gather(exposed, spent)
    return time.monotonic()


async def _delays(
    brokers: str, worker: Worker, probes: int, warm: int, samples: list[float]
) -> None:
    results = Results(worker, PROBE)
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", linger_ms=0)
    await producer.start()
    rng = random.Random(3)
    try:
        for k in range(1, probes + warm + 1):
            acked = await _probe_ack(producer, f"probe-{k}")
            deadline = acked + 60
            while True:
                answer = results.get()  # blocking, on purpose: nothing else runs meanwhile
                if answer["subjects"] >= k and spend_sum(answer) >= k:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"probe {k} not visible after 60 s: {answer['lag']}")
                await asyncio.sleep(POLL_S)
            if k > warm:
                samples.append(time.monotonic() - acked)
            # Pacing, not synchronisation: probes fall anywhere in a publish cycle.
            await asyncio.sleep(rng.uniform(0, 1.0))
    finally:
        await producer.stop()


def delays(brokers: str, worker: Worker, probes: int, warm: int, samples: list[float]) -> None:
    """Seconds from each probe's produce acks to the results answer that shows it, appended
    to `samples` (kept when a later probe fails)."""
    asyncio.run(_delays(brokers, worker, probes, warm, samples))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- the run -----------------------------------------------------------------------------------


@contextmanager
def fresh_broker(workdir: Path, name: str) -> Iterator[str]:
    """An embedded broker with the topics and both experiment flags, and nobody reading."""
    port = free_port()
    brokers = f"127.0.0.1:{port}"
    broker = start_broker("127.0.0.1", port, workdir / f"broker-{name}.log")
    try:
        setup = Worker(
            brokers, workdir / f"setup-{name}", f"bench-setup-{name}", **ON_THE_TOPICS
        ).start()
        try:
            admin = setup.admin()
            admin.put(ENVIRONMENT, EXPERIMENT, experiment_flag(VARIANTS))
            admin.put(ENVIRONMENT, PROBE, experiment_flag(("a", "b")))
            assert setup.process is not None
            idle_rss = rss_mb(setup.process.pid)
        finally:
            setup.stop()
        os.environ["BENCH_IDLE_RSS_MB"] = f"{idle_rss:.1f}"
        yield brokers
    finally:
        stop(broker)


def start_workers(
    brokers: str, workdir: Path, app_id: str, count: int, fetch_wait_ms: int
) -> list[Worker]:
    wait = {"FLAGSTREAM_ATTRIBUTION_FETCH_WAIT_MS": str(fetch_wait_ms)}
    workers = [
        Worker(brokers, workdir / f"{app_id}-{i}", app_id, **wait, **ON_THE_TOPICS)
        for i in range(count)
    ]
    for worker in workers:
        worker.launch()
    for worker in workers:
        worker.wait_ready(120)
    return workers


def profiled(pid: int, out: Path | None) -> Callable[[], None]:
    if out is None:
        return lambda: None
    spy = subprocess.Popen(
        [
            *(os.environ.get("PY_SPY", "py-spy"), "record", "-p", str(pid), "-o", str(out)),
            *("-f", "speedscope", "-r", "100", "--nonblocking"),
        ],
        stdout=out.with_suffix(".log").open("ab"),
        stderr=subprocess.STDOUT,
    )

    def finish() -> None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
        spy.wait(120)

    return finish


def scenario(
    args: argparse.Namespace, workdir: Path, processes: int, records: tuple[list[Record], ...]
) -> dict[str, Any]:
    """One fresh broker: pre-produce, raw reference, then the worker(s); with one worker, also
    the memory and the result delay."""
    total = sum(len(r) for r in records)
    out: dict[str, Any] = {}
    with fresh_broker(workdir, f"p{processes}") as brokers:
        idle_rss = float(os.environ["BENCH_IDLE_RSS_MB"])
        seconds = sum(
            produce(brokers, t, r)
            for t, r in zip((TOPICS.exposures, TOPICS.metric_events), records, strict=True)
        )
        print(
            f"[{processes}] produced {total} records in {seconds:.1f} s; {load(time.time())}",
            flush=True,
        )
        out["raw"] = raw_rate(brokers, processes, total, workdir, args.fetch_wait_ms)
        print(
            f"[{processes}] raw: {out['raw'].sustained():,.0f}/s; {out['raw'].loads[-1]}",
            flush=True,
        )
        workers = start_workers(
            brokers, workdir, f"bench-p{processes}", processes, args.fetch_wait_ms
        )
        try:
            pid = workers[0].process.pid if workers[0].process else 0
            finish = profiled(
                pid, args.profile / f"worker-p{processes}.json" if args.profile else None
            )
            out["ours"] = worker_rate(workers, total)
            finish()
            print(
                f"[{processes}] ours: {out['ours'].sustained():,.0f}/s; {out['ours'].loads[-1]}",
                flush=True,
            )
            subjects = Results(workers[0], EXPERIMENT)
            deadline = time.monotonic() + 60
            while subjects.get()["subjects"] < args.subjects and time.monotonic() < deadline:
                time.sleep(0.2)
            out["subjects_reported"] = subjects.get()["subjects"]
            if processes == 1:
                out["memory"] = memory(workers[0], idle_rss, args.subjects)
                print_memory(out["memory"], args.subjects)
                out["delay"] = delay_phase(
                    args, brokers, workers[0], workdir, out["ours"].sustained()
                )
                print_delay(out["delay"])
        finally:
            for worker in workers:
                worker.stop()
    return out


def memory(worker: Worker, idle_rss: float, subjects: int) -> dict[str, Any]:
    assert worker.process is not None
    rss = rss_mb(worker.process.pid)
    disk = du_mb(worker.data_dir / "experiments")
    per_million = 1e6 / subjects
    return {
        "rss_mb": rss,
        "idle_rss_mb": idle_rss,
        "rss_per_million_mb": (rss - idle_rss) * per_million,
        "rocksdb_mb": disk,
        "rocksdb_per_million_mb": sum(disk.values()) * per_million,
        "load": load(time.time()),
    }


def delay_phase(
    args: argparse.Namespace, brokers: str, worker: Worker, workdir: Path, sustained: float
) -> dict[str, Any]:
    """Probes under a paced load: `--rate`, or half what the worker sustained, at most the
    goal's 7,000 exposures/s (+ as many events), so the worker stays caught up."""
    rate = args.rate or int(min(7000, sustained / 2 / 2))
    out = workdir / "paced.json"
    pacer = spawn(["pace", brokers, str(rate), str(args.subjects), str(out)], workdir / "pace.log")
    error = None
    samples: list[float] = []
    caught_up = folded_per_s = math.nan
    try:
        caught_up = wait_caught_up(worker, rate)
        before, started = folded(worker), time.monotonic()
        try:
            delays(brokers, worker, args.probes, 3, samples)
        finally:
            folded_per_s = (folded(worker) - before) / (time.monotonic() - started)
    except RuntimeError as exc:  # not caught up, or a probe never showed: say so, go on
        error = str(exc)[:400]
    finally:
        pacer.send_signal(signal.SIGTERM)
        pacer.wait(60)
    paced = json.loads(out.read_text())
    return {
        "samples": samples,
        "error": error,
        "get_ms": get_ms(worker),
        "rate": rate,
        "caught_up_s": caught_up,
        "paced_per_topic_per_s": paced["per_topic_per_s"],
        "folded_per_s": folded_per_s,
        "load": load(time.time()),
    }


def get_ms(worker: Worker, count: int = 20) -> float:
    """Mean milliseconds of a results request for the probe experiment (client side)."""
    results = Results(worker, PROBE)
    started = time.perf_counter()
    for _ in range(count):
        results.get()
    return (time.perf_counter() - started) / count * 1000


def wait_caught_up(worker: Worker, rate: int, timeout_s: float = 120) -> float:
    """Seconds until every source partition reports at most `rate` records not folded (about
    4 s of its share of the load), as the results' lag says."""
    results = Results(worker, PROBE)
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        worst = results.get()["lag"]["worst_behind"]
        if worst is not None and worst <= rate:
            return time.monotonic() - started
        time.sleep(0.2)
    raise RuntimeError(f"the worker did not catch up with {rate} exposures/s + events/s")


def report(args: argparse.Namespace, runs: dict[int, dict[str, Any]], workdir: Path) -> None:
    print(
        f"\nmachine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}; N = {args.events:,} exposures + {args.events:,} "
        f"metric events, {args.subjects:,} subjects; logs in {workdir}\n"
    )
    print("| pipeline | processes | sustained records/s (10-90%) | overall records/s | load |")
    print("|---|---:|---:|---:|---|")
    for processes, run in runs.items():
        for rate in (run["raw"], run["ours"]):
            print(
                f"| {rate.name} | {processes} | {rate.sustained():,.0f} | {rate.overall():,.0f} "
                f"| {rate.loads[-1]} |"
            )
    print()
    for processes, run in runs.items():
        ratio = run["ours"].sustained() / run["raw"].sustained()
        each = run["ours"].sustained() / 2
        print(
            f"{processes} process(es): ours/raw {ratio:.2f}; {each:,.0f} exposures/s + {each:,.0f}"
            f" metric events/s (goal 7,000 + 7,000); subjects in results "
            f"{run['subjects_reported']:,} of {args.subjects:,}"
        )
    one = runs.get(1, {})
    if "delay" in one:
        print_delay(one["delay"])
    if "memory" in one:
        print_memory(one["memory"], args.subjects)


def print_delay(delay: dict[str, Any]) -> None:
    if delay["error"]:
        print(f"\nresult delay: failed at {delay['rate']:,}/s: {delay['error']}", flush=True)
    samples = delay["samples"]
    if not samples:
        return
    print(
        f"\nresult delay, {len(samples)} probes at {delay['paced_per_topic_per_s']:,.0f} "
        f"(asked {delay['rate']:,}, caught up after {delay['caught_up_s']:.1f} s) "
        f"exposures/s + as many events/s (worker folded {delay['folded_per_s']:,.0f}/s): "
        f"p50 {percentile(samples, 0.5):.2f} s, p99 {percentile(samples, 0.99):.2f} s, "
        f"max {max(samples):.2f} s, mean {statistics.mean(samples):.2f} s (goal ≤ 5 s); "
        f"a results request {delay['get_ms']:.1f} ms, polled every {POLL_S * 1000:.0f} ms; "
        f"{delay['load']}",
        flush=True,
    )


def print_memory(memory_: dict[str, Any], subjects: int) -> None:
    disk = memory_["rocksdb_mb"]
    print(
        f"\nmemory after {subjects:,} subjects: RSS {memory_['rss_mb']:.0f} MB (idle "
        f"worker {memory_['idle_rss_mb']:.0f} MB) -> {memory_['rss_per_million_mb']:,.0f} MB "
        f"per million subjects; RocksDB {sum(disk.values()):.1f} MB (sst {disk['sst']:.1f}, "
        f"wal {disk['wal']:.1f}, other {disk['other']:.1f}) -> "
        f"{memory_['rocksdb_per_million_mb']:,.0f} MB per million; {memory_['load']}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000, help="exposures, and events")
    parser.add_argument("--subjects", type=int, help="default: events / 3")
    parser.add_argument("--probes", type=int, default=50)
    parser.add_argument(
        "--rate", type=int, default=0, help="background exposures/s (default: see delay_phase)"
    )
    parser.add_argument("--processes", default="1,2", help="worker counts to run")
    parser.add_argument(
        "--fetch-wait-ms",
        type=int,
        default=FETCH_MAX_WAIT_MS,
        help="FLAGSTREAM_ATTRIBUTION_FETCH_WAIT_MS of the workers and the raw group's fetch wait",
    )
    parser.add_argument("--profile", type=Path, help="py-spy the (first) worker into this dir")
    args = parser.parse_args()
    args.subjects = args.subjects or args.events // 3
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-attribution-"))
    records = bulk(args.events, args.subjects, seed=1)
    runs = {}
    for processes in (int(p) for p in args.processes.split(",")):
        runs[processes] = scenario(args, workdir, processes, records)
    report(args, runs, workdir)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "raw":
        raw_consumer(sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "pace":
        paced_load(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))
    else:
        main()
