"""What an idle worker costs, beside its references, and how fast an isolated change spreads.

One run, one embedded broker behind a request-counting proxy (tests/kafka_counter.py), CPU
time read from /proc/<pid>/stat (user + system of the process and all its threads: robust to
what else the machine runs, unlike wall-clock rates):

1. reference: the broker alone, no client connected;
2. reference: one raw aiokafka consumer (its own process) tailing a 4-partition topic with the
   same fetch wait as the workers, and the broker beside it;
3. one worker, ready and idle: its CPU, the broker's, and the fetches per second of each of
   its consumers (told apart by the topics they fetch);
4. a second worker joins; `--changes` changes, each after `--gap-s` of silence (every consumer
   idle), written through worker A: PUT → 200 on A, and PUT → the event on B's change stream.
   `benchmarks/bench_propagation.py` times changes back to back instead.

Steps 3 and 4 run once per `--idle-polls` value (FLAGSTREAM_IDLE_POLL_MS), fresh workers each
time, and end in a table of pairs: idle CPU against the p99 of an isolated change, the two
sides of that setting. The idle worker's CPU is also split by thread (the event loop's, Faust's
consumer thread) and its requests counted by Kafka API (what wakes it besides fetches).

Pass worker settings to compare, e.g. today's behaviour before the idle pacing:
`--env FLAGSTREAM_IDLE_POLL_MS=10 --env FLAGSTREAM_BACKGROUND_POLL_MS=10`. The workers run
with the deployed group timings (heartbeat 3 s, session 30 s), not the tests' faster ones: a
heartbeat is a request like a fetch, and the tests' 1 s heartbeats add ~2 requests/s.

A/B of two versions of the code, interleaved in one run (the machine is shared: a load that
changes between two separate runs moves every figure more than a small change does):
`git worktree add --detach /tmp/before <commit>`, then `--against /tmp/before --rounds 3`
runs this very benchmark from that tree (its workers import that tree's code) and from this
one in turn, round after round, and ends in a table of medians with each round's load.

    .venv/bin/python benchmarks/bench_idle.py [--seconds 30] [--changes 40] [--quick]
        [--idle-polls 20,40] [--fetch-wait-ms 10] [--env NAME=VALUE ...] [--json out.json]
        [--against TREE --rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app.infra.broker import stop  # noqa: E402
from app.infra.topics import Topics  # noqa: E402
from tests.conftest import EventStream, Worker, flag, wait_until  # noqa: E402
from tests.kafka_counter import CountedBroker, FetchKind  # noqa: E402

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
RAW_TOPIC = "bench-idle"
# Every run's workers on one set of topics (each run its own groups).
TOPICS = Topics.named("bench-idle")
ON_THE_TOPICS = {"FLAGSTREAM_TOPIC_PREFIX": TOPICS.prefix}
RAW_PARTITIONS = 4  # as many as the flag changelog's default
# Settings' defaults, over tests/conftest.py's Worker (heartbeat 1 s, session 6 s).
DEPLOYED_GROUP_TIMINGS = {"FLAGSTREAM_HEARTBEAT_S": "3", "FLAGSTREAM_SESSION_TIMEOUT_S": "30"}


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    return cpu_s_of(Path(f"/proc/{pid}/stat"))


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread of a process, by name (`MainThread` for the main
    one: the worker's event loop; Faust's consumer thread is the busiest other one)."""
    seconds: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            tid = int(task.name)
            name = "MainThread" if tid == pid else (task / "comm").read_text().strip()
            key = name if tid == pid else f"{name} ({tid})"
            seconds[key] = cpu_s_of(task / "stat")
        except OSError:  # the thread ended meanwhile
            continue
    return seconds


def cpu_s_of(stat_path: Path) -> float:
    fields = stat_path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def cpu_percent(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Each process's CPU over the next `seconds`, in % of one core."""
    before = {name: cpu_s(pid) for name, pid in pids.items()}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    return {name: 100 * (cpu_s(pid) - before[name]) / elapsed for name, pid in pids.items()}


# -- the raw consumer reference, in its own process --------------------------------------------


def raw_consumer(brokers: str, wait_ms: int) -> None:
    """Tail RAW_TOPIC with a plain aiokafka consumer until killed."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=brokers, enable_auto_commit=False, fetch_max_wait_ms=wait_ms
        )
        await consumer.start()
        consumer.assign([TopicPartition(RAW_TOPIC, p) for p in range(RAW_PARTITIONS)])
        print("ready", flush=True)
        while True:
            await consumer.getmany(timeout_ms=1000)

    asyncio.run(run())


def create_raw_topic(brokers: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(RAW_TOPIC, RAW_PARTITIONS, 1)])
        finally:
            await admin.close()

    asyncio.run(run())


def measure_raw_consumer(
    broker: CountedBroker, wait_ms: int, seconds: float
) -> tuple[dict[str, float], float]:
    create_raw_topic(broker.brokers)
    command = [sys.executable, __file__, "--raw-consumer", broker.brokers, str(wait_ms)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE)  # this very file
    try:
        assert process.stdout is not None and process.stdout.readline() == b"ready\n"
        time.sleep(2)  # its first fetches and metadata are start-up, not idle
        assert broker.process is not None
        fetches = Rates(broker)
        cpu = cpu_percent({"consumer": process.pid, "broker": broker.process.pid}, seconds)
        return cpu, sum(fetches.done().values())
    finally:
        stop(process)


API_NAMES = {0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 8: "OffsetCommit"}
API_NAMES |= {9: "OffsetFetch", 10: "FindCoordinator", 12: "Heartbeat", 18: "ApiVersions"}


class Rates:
    """Fetches per second by kind, and requests per second by API, from now until `done()`."""

    def __init__(self, broker: CountedBroker) -> None:
        self.broker = broker
        self.before, self.requests_before = broker.snapshot()
        self.started = time.monotonic()
        self.requests: dict[str, float] = {}

    def done(self) -> dict[FetchKind, float]:
        after, requests = self.broker.snapshot()
        elapsed = time.monotonic() - self.started
        self.requests = {
            API_NAMES.get(api, f"api {api}"): (count - self.requests_before[api]) / elapsed
            for api, count in sorted(requests.items())
            if count > self.requests_before[api]
        }
        return {
            k: (after[k] - self.before[k]) / elapsed for k in after if after[k] > self.before[k]
        }


# -- isolated changes ------------------------------------------------------------------------


def isolated_changes(a: Worker, b: Worker, changes: int, gap_s: float) -> dict[str, list[float]]:
    """PUT → 200 on A and PUT → SSE event on B, each change after `gap_s` of silence."""
    admin = a.admin()
    warm_seq = admin.put("idle", "warmup", flag())["seq"]
    events = EventStream(f"{b.url}/api/v1/environments/idle/stream")
    while events.next()[0] < warm_seq:
        pass
    arrivals: dict[int, float] = {}

    def read() -> None:
        for _ in range(changes):
            seq, _, _ = events.next()
            arrivals[seq] = time.perf_counter()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    acked_ms, sent = [], {}
    for i in range(changes):
        time.sleep(gap_s)  # the silence is what is measured: every consumer goes idle
        started = time.perf_counter()
        seq = admin.put("idle", f"f{i % 5}", flag(default="on" if i % 2 else "off"))["seq"]
        acked_ms.append((time.perf_counter() - started) * 1000)
        sent[seq] = started
        wait_until(lambda seq=seq: seq in arrivals, 10)
    events.close()
    to_b_ms = [(arrivals[seq] - sent[seq]) * 1000 for seq in sent]
    return {"acked_ms": acked_ms, "to_b_ms": to_b_ms}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- the run ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = {
        "FLAGSTREAM_FETCH_MAX_WAIT_MS": str(args.fetch_wait_ms),
        **DEPLOYED_GROUP_TIMINGS,
        **dict(args.env),
    }
    broker = CountedBroker().start()
    assert broker.process is not None
    workdir = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    result: dict[str, Any] = {"settings": env, "seconds": args.seconds}
    workers: list[Worker] = []
    try:
        time.sleep(1)
        result["broker_alone"] = cpu_percent({"broker": broker.process.pid}, args.seconds)
        step("broker alone", result["broker_alone"])
        raw_cpu, raw_fetches = measure_raw_consumer(broker, args.fetch_wait_ms, args.seconds)
        result["raw_consumer"] = {**raw_cpu, "fetches_per_s": raw_fetches}
        step("raw aiokafka consumer", result["raw_consumer"])

        polls = args.idle_polls or [None]
        result["runs"] = []
        for i, poll in enumerate(polls):
            run_env = env if poll is None else {**env, "FLAGSTREAM_IDLE_POLL_MS": str(poll)}
            a = Worker(
                broker.brokers, workdir / f"a{i}", f"bench-idle-{i}", **run_env, **ON_THE_TOPICS
            )
            b = Worker(
                broker.brokers, workdir / f"b{i}", f"bench-idle-{i}", **run_env, **ON_THE_TOPICS
            )
            workers = [a, b]
            a.start()
            measured = measure_idle_worker(broker, a, args)
            measured["idle_poll_ms"] = poll
            step(f"idle worker (idle poll {poll or 'as set'})", measured["worker"])
            b.start()
            measured["isolated"] = isolated_changes(a, b, args.changes, args.gap_s)
            result["runs"].append(measured)
            for worker in workers:
                worker.stop()
            workers = []
    finally:
        for worker in workers:
            worker.stop()
        broker.stop()
    return result


def measure_idle_worker(
    broker: CountedBroker, a: Worker, args: argparse.Namespace
) -> dict[str, Any]:
    """A ready worker's CPU (and by thread), the broker's, and its requests, while idle."""
    assert a.process is not None and broker.process is not None
    wait_for_group_consumers(broker)
    time.sleep(args.settle_s)  # start-up work (first commits, metadata) is not idleness
    fetches = Rates(broker)
    threads_before = thread_cpu_s(a.process.pid)
    started = time.monotonic()
    worker_cpu = cpu_percent({"worker": a.process.pid, "broker": broker.process.pid}, args.seconds)
    elapsed = time.monotonic() - started
    threads_after = thread_cpu_s(a.process.pid)
    by_kind = fetches.done()
    threads = {
        name: 100 * (seconds - threads_before.get(name, 0.0)) / elapsed
        for name, seconds in threads_after.items()
    }
    return {
        "worker": {**worker_cpu, "fetches_per_s": sum(by_kind.values())},
        "threads": {k: round(v, 2) for k, v in sorted(threads.items(), key=lambda t: -t[1]) if v},
        "requests_per_s": {k: round(v, 2) for k, v in fetches.requests.items()},
        "fetches_by_consumer": {
            f"{'+'.join(k.topics)} (wait {k.max_wait_ms} ms)": round(rate, 1)
            for k, rate in sorted(by_kind.items(), key=lambda item: -item[1])
        },
    }


def wait_for_group_consumers(broker: CountedBroker, timeout_s: float = 120.0) -> None:
    """Until the last group consumers to join (Kafka evaluation requests) fetch: with the
    deployed 30 s session the embedded broker lets them join ~15-20 s after ready, and an
    idle window before that would leave them out."""
    deadline = time.monotonic() + timeout_s
    before, _ = broker.snapshot()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        after, _ = broker.snapshot()
        if any(k.topics == (TOPICS.evaluation_requests,) and after[k] > before[k] for k in after):
            return
    raise RuntimeError("the worker's evaluation-requests consumer never fetched")


def step(name: str, figures: dict[str, float]) -> None:
    print(f"{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()), flush=True)


def report(result: dict[str, Any]) -> None:
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}; settings: {result['settings']}")
    for run in result["runs"]:
        report_run(result, run)
    if len(result["runs"]) > 1:
        print("\npairs: the idle worker's cost against an isolated change's latency")
        print("| FLAGSTREAM_IDLE_POLL_MS | worker CPU % | broker CPU % | fetches/s |", end="")
        print(" requests/s | CPU ms per request, worker / broker |", end="")
        print(" event on B p50 ms | p99 ms | max ms |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for run in result["runs"]:
            worker, to_b = run["worker"], run["isolated"]["to_b_ms"]
            requests = sum(run["requests_per_s"].values()) or 1.0
            # % of a core / (requests/s) * 10 = ms of CPU per request
            per_request = [10 * worker[side] / requests for side in ("worker", "broker")]
            print(
                f"| {run['idle_poll_ms']} | {worker['worker']:.1f} | {worker['broker']:.1f} "
                f"| {worker['fetches_per_s']:.1f} | {requests:.1f} "
                f"| {per_request[0]:.2f} / {per_request[1]:.2f} | {statistics.median(to_b):.1f} "
                f"| {percentile(to_b, 0.99):.1f} | {max(to_b):.1f} |"
            )


def report_run(result: dict[str, Any], run: dict[str, Any]) -> None:
    alone, raw, worker = result["broker_alone"], result["raw_consumer"], run["worker"]
    seconds = result["seconds"]
    if run["idle_poll_ms"] is not None:
        print(f"\n## FLAGSTREAM_IDLE_POLL_MS={run['idle_poll_ms']}")
    print(f"\n| idle, over {seconds:.0f} s | process CPU % of a core | broker CPU % | fetches/s |")
    print("|---|---:|---:|---:|")
    print(f"| reference: broker alone, no client | - | {alone['broker']:.1f} | 0 |")
    print(
        f"| reference: one raw aiokafka consumer | {raw['consumer']:.1f} | {raw['broker']:.1f} "
        f"| {raw['fetches_per_s']:.1f} |"
    )
    print(
        f"| **flagstream worker** | **{worker['worker']:.1f}** | **{worker['broker']:.1f}** "
        f"| {worker['fetches_per_s']:.1f} |"
    )
    if raw["consumer"] > 0:
        print(f"\nidle worker / one raw consumer (CPU): {worker['worker'] / raw['consumer']:.1f}x")
    print("\nfetches/s per consumer of the idle worker:")
    for name, rate in run["fetches_by_consumer"].items():
        print(f"  {rate:6.1f}  {name}")
    print("requests/s by Kafka API (all clients of the broker: the worker only, here):")
    print("  " + ", ".join(f"{api} {rate:.1f}" for api, rate in run["requests_per_s"].items()))
    print("CPU % of a core by thread of the idle worker:")
    print("  " + ", ".join(f"{name} {share:.1f}" for name, share in run["threads"].items()))
    isolated = run["isolated"]
    print(f"\nisolated changes ({len(isolated['to_b_ms'])}, each after silence):")
    print("| path | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|")
    for name, key in (("PUT → 200 on A", "acked_ms"), ("PUT → event on B's stream", "to_b_ms")):
        values: list[float] = isolated[key]
        print(
            f"| {name} | {statistics.median(values):.1f} | {percentile(values, 0.99):.1f} "
            f"| {max(values):.1f} |"
        )


# -- A/B against another tree, interleaved ----------------------------------------------------

AB_COLUMNS = ("worker CPU %", "broker CPU %", "fetches/s", "event on B p50 ms", "p99 ms")


def interleaved(args: argparse.Namespace, passed: list[str]) -> None:
    """Run this benchmark from `args.against` (A) and from this tree (B) in turn, `rounds`
    times, each a fresh process with the same options; print each round and the medians."""
    rows: dict[str, list[tuple[float, ...]]] = {"A": [], "B": []}
    trees = {"A": Path(args.against).resolve(), "B": REPO}
    with tempfile.TemporaryDirectory(prefix="bench-idle-ab-") as scratch:
        for round_no in range(1, args.rounds + 1):
            for side, tree in trees.items():
                out = Path(scratch) / f"{side}{round_no}.json"
                load = os.getloadavg()[0]
                command = [sys.executable, str(tree / "benchmarks" / "bench_idle.py")]
                subprocess.run([*command, *passed, "--json", str(out)], check=True)
                figures = ab_figures(json.loads(out.read_text()))
                rows[side].append(figures)
                print(f"round {round_no} {side} (load {load:.2f}): " + ab_line(figures), flush=True)
    print(f"\nA = {trees['A']}, B = {trees['B']}; medians of {args.rounds} interleaved rounds:")
    print("| side | " + " | ".join(AB_COLUMNS) + " |\n|---|" + "---:|" * len(AB_COLUMNS))
    for side, measured in rows.items():
        medians = tuple(statistics.median(column) for column in zip(*measured, strict=True))
        print(f"| {side} | " + " | ".join(f"{v:.1f}" for v in medians) + " |")


def ab_figures(result: dict[str, Any]) -> tuple[float, ...]:
    """The first run's idle CPU (worker, broker), fetches/s and after-silence p50 / p99."""
    run = result["runs"][0]
    to_b = run["isolated"]["to_b_ms"]
    worker = run["worker"]
    return (
        worker["worker"],
        worker["broker"],
        worker["fetches_per_s"],
        statistics.median(to_b),
        percentile(to_b, 0.99),
    )


def ab_line(figures: tuple[float, ...]) -> str:
    return ", ".join(f"{name} {value:.1f}" for name, value in zip(AB_COLUMNS, figures, strict=True))


def without_ab_options(argv: list[str]) -> list[str]:
    """The command line minus --against/--rounds/--json (each side gets its own --json)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--against", "--rounds", "--json"):
            skip = True
        elif not arg.startswith(("--against=", "--rounds=", "--json=")):
            kept.append(arg)
    return kept


def key_value(text: str) -> tuple[str, str]:
    name, _, value = text.partition("=")
    return name, value


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--raw-consumer":
        raw_consumer(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0, help="each CPU measurement")
    parser.add_argument("--settle-s", type=float, default=5.0, help="after ready, unmeasured")
    parser.add_argument("--changes", type=int, default=40, help="isolated changes")
    parser.add_argument("--gap-s", type=float, default=2.0, help="silence before each change")
    parser.add_argument("--fetch-wait-ms", type=int, default=10, help="as `up` and the tests")
    parser.add_argument("--env", type=key_value, action="append", default=[])
    parser.add_argument(
        "--idle-polls",
        type=lambda text: [int(v) for v in text.split(",")],
        help="FLAGSTREAM_IDLE_POLL_MS values to pair (e.g. 20,40): fresh workers for each",
    )
    parser.add_argument("--quick", action="store_true", help="10 s measurements, 10 changes")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--against", help="A/B: a tree (git worktree) of the code to compare")
    parser.add_argument("--rounds", type=int, default=3, help="A/B: interleaved rounds")
    args = parser.parse_args()
    if args.against:
        interleaved(args, without_ab_options(sys.argv[1:]))
        return
    if args.quick:
        args.seconds, args.changes, args.settle_s = 10.0, 10, 3.0
    result = run(args)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
