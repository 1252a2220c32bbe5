"""Every core: OFREP single-flag evaluations against a worker of 1 and of 2 processes.

One run, one embedded broker, two workers side by side, driven in turn by the same `wrk`:

(a) reference: `flagstream worker --processes 1`, one process (what every worker was before
    issue 11, item 4);
(b) `flagstream worker --processes 2`: two full workers on the one HTTP port (SO_REUSEPORT,
    app/cli/processes.py), the kernel spreading wrk's connections between them.

Both answer the request of benchmarks/bench_ofrep.py (a targeted flag, an SDK key, a context)
on the fast path. Reported per configuration, as medians of `--rounds` interleaved rounds:
requests/s, p99, worker CPU µs per request (user + system of every worker process, parent
included, from /proc), and wrk's own CPU per request and share of a core (its rusage).

What the load generator does to the figure: this machine has 2 cores and wrk runs on them too.
A worker of 1 process can use at most one core, so wrk has the other; a worker of 2 processes
would use both, but wrk takes what it needs of them (its share of a core is printed), so (b)/(a)
in throughput is bounded by (2 - wrk's cores) / 1 here, not 2. CPU per request is the figure
that carries over to a machine where the load comes from elsewhere; throughput per core is
1e6 / CPU µs per request.

    .venv/bin/python benchmarks/bench_cores.py [--duration 10] [--connections 64] [--rounds 3]
        [--threads 1] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.cli.processes import consecutive_free_ports
from app.infra.broker import free_port, start_broker, stop
from benchmarks.bench_ofrep import (
    CONTEXT,
    FLAG,
    FLAG_KEY,
    PATH,
    WORKER_ENV,
    WRK_SCRIPT,
    cpu_seconds,
    post,
    to_ms,
)
from tests.conftest import SDK_KEY, Worker, wait_until

ONE, TWO = "(a) 1 process", "(b) 2 processes"


class Figures:
    """One wrk run against one configuration."""

    def __init__(
        self, rate: float, p99_ms: float, cpu_us: float, wrk_cpu_us: float, wrk_share: float
    ):
        self.rate, self.p99_ms, self.cpu_us = rate, p99_ms, cpu_us
        self.wrk_cpu_us, self.wrk_share = wrk_cpu_us, wrk_share

    def as_dict(self) -> dict[str, float]:
        return dict(vars(self))


def start_worker(brokers: str, workdir: Path, processes: int) -> Worker:
    """A worker of `processes` processes, each ready (each on its own metrics port)."""
    worker = Worker(
        brokers,
        workdir / f"worker-{processes}p",
        f"bench-cores-{processes}p",
        **WORKER_ENV,
        FLAGSTREAM_PROCESSES=str(processes),
    )
    worker.metrics_port = consecutive_free_ports("127.0.0.1", processes)
    worker.metrics_url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
    worker.extra_env["FLAGSTREAM_METRICS_PORT"] = str(worker.metrics_port)
    worker.start(timeout_s=180)
    for index in range(processes):
        url = f"http://127.0.0.1:{worker.metrics_port + index}/metrics"
        wait_until(
            lambda u=url: b"\nflagstream_ready 1.0" in read(u), timeout_s=180, interval_s=0.5
        )
    return worker


def read(url: str) -> bytes:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body: bytes = response.read()
            return body
    except OSError:
        return b""


def pids_of(worker: Worker) -> list[int]:
    """The worker's process and its children (the worker processes of `--processes N`)."""
    assert worker.process is not None
    pid = worker.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *map(int, children)]


def evaluations_by_process(worker: Worker, processes: int) -> list[float]:
    """How many evaluations of the flag each process answered (its own metrics port)."""
    pattern = rf'flagstream_evaluations_total\{{[^}}]*flag="{FLAG_KEY}"[^}}]*\}} (\S+)'
    counts = []
    for index in range(processes):
        text = read(f"http://127.0.0.1:{worker.metrics_port + index}/metrics").decode()
        counts.append(sum(float(value) for value in re.findall(pattern, text)))
    return counts


def wrk(
    url: str, script: Path, args: argparse.Namespace, duration_s: int, pids: list[int]
) -> Figures:
    """One wrk run: throughput, p99, the workers' CPU per request, wrk's own CPU."""
    before = sum(cpu_seconds(pid) for pid in pids)
    command = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{duration_s}s",
        "--latency",
        "-s",
        str(script),
        url + PATH,
    ]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.monotonic() - started
    workers_cpu = sum(cpu_seconds(pid) for pid in pids) - before
    if process.returncode != 0 or "Non-2xx" in output or "Socket errors" in output:
        print(output, file=sys.stderr)
        raise RuntimeError("wrk failed or saw errors: the comparison would be meaningless")
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p99 = to_ms(re.search(r"^\s+99%\s+(\S+)$", output, re.MULTILINE).group(1))  # type: ignore[union-attr]
    wrk_cpu = usage.ru_utime + usage.ru_stime
    return Figures(
        rate, p99, workers_cpu / requests * 1e6, wrk_cpu / requests * 1e6, wrk_cpu / elapsed
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of wrk before measuring")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--quick", action="store_true", help="one short round (a smoke run)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.rounds = 3, 1, 1
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: `apt-get install -y wrk` (the benchmark drives it)")

    workdir = Path(tempfile.mkdtemp(prefix="bench-cores-"))
    kafka_port = free_port()
    broker = start_broker("127.0.0.1", kafka_port, workdir / "broker.log")
    brokers = f"127.0.0.1:{kafka_port}"
    workers: dict[str, tuple[Worker, int]] = {}
    try:
        workers[ONE] = (start_worker(brokers, workdir, 1), 1)
        workers[TWO] = (start_worker(brokers, workdir, 2), 2)
        bodies = set()
        for worker, _ in workers.values():
            worker.admin().put("bench", FLAG_KEY, FLAG)
            status, body = post(worker.url)
            assert status == 200, body
            bodies.add(body)
        assert len(bodies) == 1, "both configurations must answer the same bytes"
        script = workdir / "post.lua"
        script.write_text(WRK_SCRIPT.format(body=json.dumps(json.dumps(CONTEXT)), key=SDK_KEY))
        results = interleaved(workers, script, args)
        spread = evaluations_by_process(workers[TWO][0], 2)
    finally:
        for worker, _ in workers.values():
            worker.stop()
        stop(broker)

    print()
    print(
        f"machine: {platform.processor() or platform.machine()}, nproc={os.cpu_count()}, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"command: wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency"
        f" (POST, Lua script); {args.rounds} interleaved round(s), medians"
    )
    print(f"evaluations answered by each process of (b): {[f'{n:,.0f}' for n in spread]}")
    summary = report(results)
    if args.json:
        rounds = {name: [figures.as_dict() for figures in runs] for name, runs in results.items()}
        args.json.write_text(json.dumps({"rounds": rounds, "spread": spread, **summary}, indent=2))


def interleaved(
    workers: dict[str, tuple[Worker, int]], script: Path, args: argparse.Namespace
) -> dict[str, list[Figures]]:
    """A warm-up each, then rounds that run each configuration once, alternating which first."""
    pids = {name: pids_of(worker) for name, (worker, _) in workers.items()}
    for name, (worker, _) in workers.items():
        wrk(worker.url, script, args, args.warmup, pids[name])
    names = list(workers)
    results: dict[str, list[Figures]] = {name: [] for name in workers}
    for round_ in range(args.rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            figures = wrk(workers[name][0].url, script, args, args.duration, pids[name])
            results[name].append(figures)
            print(
                f"{name:16} {figures.rate:10,.0f} req/s  p99 {figures.p99_ms:6.2f} ms"
                f"  workers {figures.cpu_us:5.1f} µs CPU/req  wrk {figures.wrk_cpu_us:5.1f}"
                f" µs CPU/req ({figures.wrk_share:.2f} of a core)",
                flush=True,
            )
    return results


def report(results: dict[str, list[Figures]]) -> dict[str, Any]:
    """Print the medians and the ratio (b)/(a) as markdown; return them for the JSON summary."""

    def median(name: str, field: str) -> float:
        return float(statistics.median(getattr(run, field) for run in results[name]))

    fields = ("rate", "p99_ms", "cpu_us", "wrk_cpu_us", "wrk_share")
    medians = {name: {field: median(name, field) for field in fields} for name in results}
    print(
        "| worker | req/s | p99 ms | worker CPU µs/req | req/s per worker core"
        " | wrk CPU µs/req | wrk's share of a core | req/s each round |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, row in medians.items():
        each = " / ".join(f"{run.rate:,.0f}" for run in results[name])
        print(
            f"| {name} | {row['rate']:,.0f} | {row['p99_ms']:.2f} | {row['cpu_us']:.1f}"
            f" | {1e6 / row['cpu_us']:,.0f} | {row['wrk_cpu_us']:.1f} | {row['wrk_share']:.2f}"
            f" | {each} |"
        )
    ratio = {
        "throughput": medians[TWO]["rate"] / medians[ONE]["rate"],
        "p99": medians[TWO]["p99_ms"] / medians[ONE]["p99_ms"],
        "cpu_per_request": medians[TWO]["cpu_us"] / medians[ONE]["cpu_us"],
    }
    ceiling = (os.cpu_count() or 1) - medians[TWO]["wrk_share"]
    print()
    print(
        f"(b)/(a): throughput {ratio['throughput']:.2f}, p99 {ratio['p99']:.2f}, CPU per request"
        f" {ratio['cpu_per_request']:.2f}; the cores left to (b) beside wrk: {ceiling:.2f}"
        " (its throughput ratio can be at most about that)"
    )
    return {"medians": medians, "ratio": ratio, "cores_left_beside_wrk": ceiling}


if __name__ == "__main__":
    main()
