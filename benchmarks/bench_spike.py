"""A 10x spike of OFREP requests: shed, don't drown (issue 11, item 7).

One run, two workers on one embedded broker, each driven in turn by the same paced load:

(a) reference: a worker that never sheds (`FLAGSTREAM_SHED_LOOP_LAG_MS=0`): what the spike
    does to a worker whose only queue is the kernel's;
(b) flagstream: a worker as deployed (shedding past `--shed-ms` of event-loop lag, 429 with
    `Retry-After`, `app/web/overload.py`).

The load is open loop, paced every 10 ms by a generator in its own process (wrk2 is not
available, and wrk's closed loop slows down with the server instead of spiking): a normal
rate for `--before` seconds, ten times it for `--spike` seconds, the normal rate again for
`--after` seconds. A request waits for a free connection (at most `--connections`, opened as
needed) and its latency counts from when it was due, so the client's own queue is in it (no
coordinated omission); one not answered within `--timeout` is a timeout. The clients ignore
`Retry-After` (the worst case: the official providers back off).

The request is a bulk evaluation (`POST /ofrep/v1/evaluate/flags`, what a web or mobile SDK
sends when an app opens) of an environment of `--flags` targeted flags, so one core of the
worker is overloaded at a rate one Python generator can offer; `--path single` spikes
single-flag evaluations (the fast path) instead, where the generator, not the worker, may be
the limit (the summary prints offered against sent). The normal rate is `--rate`, or
`--utilisation` (0.3) of the worker's capacity measured with wrk first: the spike is then 3x
what the worker can answer.

Per phase and worker: requests offered, p50/p99 of answered (200) requests, share shed (429),
timeouts, the worker's RSS (max), and the recovery time: from the end of the spike to the
first second whose p99 is within 1.25x of the before phase's (and nothing shed); then how long
the worker stays busy once the load has stopped (answers to requests nobody waits for). The
next worker is driven only once the previous one is idle. Figures taken on a loaded machine
mean little: the lag the worker sheds on includes the time the OS does not run it (print the
load average beside them).

    .venv/bin/python benchmarks/bench_spike.py            # 20 s, 30 s spike, 30 s after
    .venv/bin/python benchmarks/bench_spike.py --quick    # 5 s, 10 s spike, 10 s after
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.infra.broker import free_port, start_broker, stop
from tests.conftest import REPO, SDK_KEY, Worker

ENV = "bench"
CONTEXT = {"context": {"targetingKey": "user-1234", "email": "ann@example.com", "plan": "pro"}}
REF, OURS = "(a) never sheds", "(b) flagstream (sheds)"
TICK_S = 0.01  # the generator's pacing step


def targeted_flag(i: int) -> dict[str, Any]:
    """A realistic flag: a rule on the email's domain, then a 50/50 split by plan."""
    return {
        "state": "ENABLED",
        "variants": {"control": f"control-{i}", "treatment": f"treatment-{i}"},
        "defaultVariant": "control",
        "targeting": {
            "if": [
                {"ends_with": [{"var": "email"}, f"@tenant-{i}.example"]},
                "treatment",
                {"in": [{"var": "plan"}, ["pro", "enterprise"]]},
                {"fractional": [["control", 50], ["treatment", 50]]},
                "control",
            ]
        },
    }


# The load generator, run as `python -c GENERATOR CONFIG_JSON`; prints one JSON document: per
# second of due time, [due, 200s, 429s, other statuses, timeouts, latencies of the 200s in ms].
GENERATOR = r"""
import asyncio, collections, json, sys, time

config = json.loads(sys.argv[1])
HOST, PORT, TIMEOUT = "127.0.0.1", config["port"], config["timeout_s"]
TICK = config["tick_s"]
REQUEST = bytes.fromhex(config["request_hex"])
seconds = sum(s for _, s in config["phases"])
stats = [[0, 0, 0, 0, 0, []] for _ in range(seconds + int(TIMEOUT) + 2)]
queue = collections.deque()  # due times of requests not sent yet
idle, busy = [], set()
opening = [0]
loop = None
start = 0.0


def bucket(due):
    return stats[min(len(stats) - 1, int(due - start))]


class Connection(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer, self.due = transport, bytearray(), None
        opening[0] -= 1
        idle.append(self)
        dispatch()

    def connection_lost(self, exc):
        if self in idle:
            idle.remove(self)
        if self.due is not None:
            busy.discard(self)
            bucket(self.due)[3] += 1
            self.due = None
        dispatch()

    def send(self, due):
        self.due = due
        busy.add(self)
        self.transport.write(REQUEST)

    def data_received(self, data):
        buffer = self.buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0 or self.due is None:
            return
        head = bytes(buffer[:end]).lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
        if len(buffer) < end + 4 + length:
            return
        del buffer[: end + 4 + length]
        status = int(head[9:12])
        row = bucket(self.due)
        if status == 200:
            row[0] += 1
            row[5].append((loop.time() - self.due) * 1000)
        elif status == 429:
            row[1] += 1
        else:
            row[2] += 1
        self.due = None
        busy.discard(self)
        idle.append(self)
        dispatch()


def dispatch():
    while queue and idle:
        idle.pop().send(queue.popleft())
    want = min(len(queue), config["connections"] - len(idle) - len(busy) - opening[0])
    for _ in range(max(0, want)):
        opening[0] += 1
        task = loop.create_task(loop.create_connection(Connection, HOST, PORT))
        task.add_done_callback(opened)


def opened(task):
    if task.cancelled() or task.exception() is not None:
        opening[0] -= 1


def expire(now):
    while queue and now - queue[0] > TIMEOUT:
        bucket(queue.popleft())[4] += 1
    for connection in [c for c in busy if now - c.due > TIMEOUT]:
        bucket(connection.due)[4] += 1
        connection.due = None
        busy.discard(connection)
        connection.transport.abort()


async def main():
    global loop, start
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1
    due, carry = start, 0.0
    for rate, phase_s in config["phases"]:
        for _ in range(int(phase_s / TICK)):
            await asyncio.sleep(max(0.0, due - loop.time()))
            carry += rate * TICK
            count, carry = int(carry), carry - int(carry)
            queue.extend([due] * count)
            expire(loop.time())
            dispatch()
            due += TICK
    while (queue or busy) and loop.time() < due + TIMEOUT + 1:
        await asyncio.sleep(0.05)
        expire(loop.time())
    print(json.dumps({"start_wall": time.time() - (loop.time() - start), "stats": stats}))


asyncio.run(main())
"""


def request_bytes(path: str) -> bytes:
    body = json.dumps(CONTEXT).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {SDK_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024  # type: ignore[union-attr]


class RssSampler(threading.Thread):
    """The worker's RSS every 0.5 s, with wall-clock times."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            self.samples.append((time.time(), rss_mb(self.pid)))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drain(pid: int, limit_s: float = 180.0) -> float:
    """Seconds until the worker is idle again (under 10% of a core for a second) after the
    load stopped: a worker that queued requests keeps working on answers nobody waits for.
    The next worker is driven only then, so the two runs do not share the cores."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        if cpu_seconds(pid) - before < 0.1:
            return time.monotonic() - started - 1.0
    return float("inf")


def capacity(url: str, path: str, workdir: Path, seconds: int) -> float:
    """Requests/s the worker answers to wrk with 64 connections (closed loop)."""
    script = workdir / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(CONTEXT))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {SDK_KEY}"\n'
    )
    command = ["wrk", "-t1", "-c64", f"-d{seconds}s", "-s", str(script), url + path]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def drive(worker: Worker, path: str, phases: list[tuple[str, float, int]], args: Any) -> Any:
    """Run the paced load against `worker`; per phase figures and the recovery time."""
    assert worker.process is not None
    sampler = RssSampler(worker.process.pid)
    sampler.start()
    config = {
        "port": worker.port,
        "timeout_s": args.timeout,
        "tick_s": TICK_S,
        "connections": args.connections,
        "request_hex": request_bytes(path).hex(),
        "phases": [(rate, seconds) for _, rate, seconds in phases],
    }
    done = subprocess.run(
        [sys.executable, "-c", GENERATOR, json.dumps(config)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    drained = drain(worker.process.pid)
    sampler.stopping.set()
    sampler.join()
    result = json.loads(done.stdout)
    stats, start_wall = result["stats"], result["start_wall"]
    figures: dict[str, dict[str, float]] = {}
    first = 0
    per_second_p99 = [percentile(row[5], 0.99) for row in stats]
    for name, rate, seconds in phases:
        rows = stats[first : first + seconds]
        ok = [latency for row in rows for latency in row[5]]
        answered = sum(row[0] for row in rows)
        shed = sum(row[1] for row in rows)
        other = sum(row[2] for row in rows)
        timeouts = sum(row[4] for row in rows)
        total = answered + shed + other + timeouts
        window = (start_wall + first, start_wall + first + seconds)
        rss = [mb for at, mb in sampler.samples if window[0] <= at < window[1]]
        figures[name] = {
            "offered_per_s": rate,
            "sent_per_s": total / seconds,
            "p50_ms": percentile(ok, 0.5),
            "p99_ms": percentile(ok, 0.99),
            "shed_share": shed / total if total else 0.0,
            "timeouts": timeouts,
            "other": other,
            "rss_max_mb": max(rss) if rss else float("nan"),
        }
        first += seconds
    before_s, spike_s = phases[0][2], phases[1][2]
    target = 1.25 * figures["before"]["p99_ms"]
    recovery = float("nan")
    for second in range(before_s + spike_s, before_s + spike_s + phases[2][2]):
        if per_second_p99[second] <= target and stats[second][1] == 0:
            recovery = float(second - before_s - spike_s)
            break
    return {
        "phases": figures,
        "recovery_s": recovery,
        "drain_s": drained,
        "per_second_p99_ms": per_second_p99,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="5 s before, 10 s spike, 10 s after")
    parser.add_argument("--before", type=int, default=20, help="seconds at the normal rate")
    parser.add_argument("--spike", type=int, default=30, help="seconds at 10x the normal rate")
    parser.add_argument("--after", type=int, default=30, help="seconds at the normal rate again")
    parser.add_argument("--path", choices=("bulk", "single"), default="bulk")
    parser.add_argument("--flags", type=int, default=50, help="flags in the environment")
    parser.add_argument("--rate", type=float, default=0.0, help="normal rate (0: measure)")
    parser.add_argument("--utilisation", type=float, default=0.3, help="normal / capacity")
    parser.add_argument("--shed-ms", type=int, default=50, help="FLAGSTREAM_SHED_LOOP_LAG_MS")
    parser.add_argument("--timeout", type=float, default=2.0, help="client timeout, seconds")
    parser.add_argument("--connections", type=int, default=256, help="most the clients open")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    if args.quick:
        args.before, args.spike, args.after = 5, 10, 10
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: `apt-get install -y wrk` (the capacity probe uses it)")
    path = "/ofrep/v1/evaluate/flags" + ("/flag-0" if args.path == "single" else "")

    workdir = Path(tempfile.mkdtemp(prefix="bench-spike-"))
    kafka_port = free_port()
    broker = start_broker("127.0.0.1", kafka_port, workdir / "broker.log")
    common = {"FLAGSTREAM_SDK_KEYS": f"{SDK_KEY}={ENV}", "FLAGSTREAM_FETCH_MAX_WAIT_MS": "500"}
    workers = {
        REF: Worker(
            f"127.0.0.1:{kafka_port}",
            workdir / "ref",
            "bench-spike-ref",
            FLAGSTREAM_SHED_LOOP_LAG_MS="0",
            **common,
        ),
        OURS: Worker(
            f"127.0.0.1:{kafka_port}",
            workdir / "ours",
            "bench-spike-ours",
            FLAGSTREAM_SHED_LOOP_LAG_MS=str(args.shed_ms),
            **common,
        ),
    }
    results: dict[str, Any] = {}
    try:
        for worker in workers.values():
            worker.start()
        admin = workers[REF].admin()
        for i in range(args.flags):
            admin.put(ENV, f"flag-{i}", targeted_flag(i))
        for worker in workers.values():  # both have every flag, compiled (first evaluation)
            for _ in range(100):
                if flags_answered(worker.url, args.flags):
                    break
                time.sleep(0.1)
        rate = args.rate
        if not rate:
            measured = capacity(workers[REF].url, path, workdir, 3)
            rate = round(measured * args.utilisation)
            print(f"capacity (wrk -c64, 3 s, never-shedding worker): {measured:,.0f} req/s")
        phases = [("before", rate, args.before), ("spike", 10 * rate, args.spike)]
        phases.append(("after", rate, args.after))
        print(f"normal rate {rate:,.0f}/s, spike {10 * rate:,.0f}/s on {path}", flush=True)
        for name, worker in workers.items():
            results[name] = drive(worker, path, phases, args)
            report_worker(name, results[name])
    finally:
        for worker in workers.values():
            worker.stop()
        stop(broker)
    summary(args, path, rate, results)


def flags_answered(url: str, flags: int) -> bool:
    request = urllib.request.Request(
        url + "/ofrep/v1/evaluate/flags",
        data=json.dumps(CONTEXT).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {SDK_KEY}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return len(json.loads(response.read())["flags"]) == flags


def report_worker(name: str, result: Any) -> None:
    for phase, figures in result["phases"].items():
        print(
            f"{name:24} {phase:6} sent {figures['sent_per_s']:8,.0f}/s  p50 "
            f"{figures['p50_ms']:7.1f} ms  p99 {figures['p99_ms']:7.1f} ms  shed "
            f"{figures['shed_share']:6.1%}  timeouts {figures['timeouts']:6,.0f}  RSS "
            f"{figures['rss_max_mb']:6.0f} MB",
            flush=True,
        )
    print(
        f"{name:24} recovery {result['recovery_s']} s; busy {result['drain_s']:.0f} s after"
        " the load stopped",
        flush=True,
    )


def summary(args: Any, path: str, rate: float, results: dict[str, Any]) -> None:
    print()
    print(
        f"machine: {platform.processor() or platform.machine()}, nproc={os.cpu_count()}, "
        f"load average {os.getloadavg()[0]:.2f}, Python {platform.python_version()}"
    )
    print(
        f"command: bench_spike.py --path {args.path} --flags {args.flags} --before {args.before}"
        f" --spike {args.spike} --after {args.after} --shed-ms {args.shed_ms}; normal "
        f"{rate:,.0f}/s, spike {10 * rate:,.0f}/s, client timeout {args.timeout} s"
    )
    print("| worker | phase | sent/s | p50 ms | p99 ms (200s) | shed | timeouts | RSS max MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, result in results.items():
        for phase, f in result["phases"].items():
            print(
                f"| {name} | {phase} | {f['sent_per_s']:,.0f} | {f['p50_ms']:.1f} | "
                f"{f['p99_ms']:.1f} | {f['shed_share']:.1%} | {f['timeouts']:,.0f} | "
                f"{f['rss_max_mb']:.0f} |"
            )
    ours, ref = results[OURS], results[REF]
    spike_ratio = ours["phases"]["spike"]["p99_ms"] / ref["phases"]["spike"]["p99_ms"]
    print(
        f"spike p99 of answered requests (b)/(a) {spike_ratio:.2f}; timeouts (b) "
        f"{ours['phases']['spike']['timeouts']:,.0f} vs (a) "
        f"{ref['phases']['spike']['timeouts']:,.0f}; recovery (b) {ours['recovery_s']} s, "
        f"(a) {ref['recovery_s']} s; busy after the load (b) {ours['drain_s']:.0f} s, (a) "
        f"{ref['drain_s']:.0f} s (goal: bounded p99, 429s not timeouts, full recovery)"
    )
    if args.json is not None:
        summary_json = {
            "command": sys.argv,
            "rate": rate,
            "path": path,
            "load_average": os.getloadavg()[0],
            "results": {
                name: {k: v for k, v in result.items() if k != "per_second_p99_ms"}
                for name, result in results.items()
            },
        }
        args.json.write_text(json.dumps(summary_json, indent=2, default=str))


if __name__ == "__main__":
    main()
