"""What makes the OFREP tail at saturation: what a worker's event loop runs besides answering.

One worker (embedded broker) answers OFREP single-flag evaluations from `wrk` at saturation,
as (b) of benchmarks/bench_ofrep.py, with benchmarks/loop_probe on its path: during the
measured run it records every garbage collection (count, CPU ms), each thread's CPU, and on
asyncio's own loop (`--loop asyncio`, the default here: uvloop's callbacks are C and cannot be
timed from Python) the CPU time of every turn of the loop and every callback, by name. A
request waits for the turn it is read in, so a turn that also ran a Kafka fetch, a heartbeat
or a collection is late for every request read in it: the tail. The reference, in the same
run, is the fast path's own answering (`Connections.answer_ready`): the report gives what
the loop spent on everything else as a share of it, and the long turns (3 ms of CPU or more)
by what else ran in them.

The timing hooks slow asyncio's loop (its answers cost ~1.5x), so read shares and counts, not
the req/s; `--loop uvloop` keeps the worker's own loop and gives the collections and threads
only.

    .venv/bin/python benchmarks/bench_loop_turns.py [--duration 10] [--quick] [--loop asyncio]
        [--worker-env KEY=VALUE ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.infra.broker import free_port, start_broker, stop
from benchmarks.bench_ofrep import CONTEXT, FLAG, FLAG_KEY, WORKER_ENV, WRK_SCRIPT, post, wrk
from tests.conftest import SDK_KEY, Worker

PROBE = Path(__file__).resolve().parent / "loop_probe"
ANSWERS = "Connections.answer_ready"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10, help="seconds of the measured run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="a 4 s run")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument(
        "--worker-env", action="append", default=[], metavar="KEY=VALUE", help="a worker setting"
    )
    parser.add_argument("--json", type=Path, help="also write the probe's figures here")
    args = parser.parse_args()
    if args.quick:
        args.duration = 4
    settings = dict(pair.split("=", 1) for pair in args.worker_env)
    workdir = Path(tempfile.mkdtemp(prefix="bench-loop-turns-"))
    out = workdir / "probe.json"
    kafka_port = free_port()
    broker = start_broker("127.0.0.1", kafka_port, workdir / "broker.log")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(PROBE), os.environ.get("PYTHONPATH")])
    )
    worker = Worker(
        f"127.0.0.1:{kafka_port}",
        workdir / "worker",
        "bench-loop-turns",
        **WORKER_ENV,
        FLAGSTREAM_EVENT_LOOP=args.loop,
        FLAGSTREAM_LOOP_PROBE=str(out),
        **settings,
    ).start()
    try:
        assert worker.process is not None
        worker.admin().put("bench", FLAG_KEY, FLAG)
        assert post(worker.url)[0] == 200
        script = workdir / "post.lua"
        script.write_text(WRK_SCRIPT.format(body=json.dumps(json.dumps(CONTEXT)), key=SDK_KEY))
        wrk(worker.url, script, 2, args.connections, worker.process.pid)  # warm-up
        Path(f"{out}.on").touch()
        time.sleep(1.0)  # the probe looks every 0.5 s
        rate, p99, cpu_us = wrk(
            worker.url, script, args.duration, args.connections, worker.process.pid
        )
        Path(f"{out}.on").unlink()
        deadline = time.monotonic() + 10
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        figures = json.loads(out.read_text())
    finally:
        worker.stop()
        stop(broker)
    print(
        f"machine: {platform.processor() or platform.machine()}, nproc={os.cpu_count()},"
        f" Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"worker on {args.loop}, wrk -t1 -c{args.connections} -d{args.duration}s:"
        f" {rate:,.0f} req/s, p99 {p99:.2f} ms, {cpu_us:.1f} µs CPU/req"
    )
    report(figures, args.duration)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


def report(figures: dict[str, Any], seconds: int) -> None:
    """Print the probe's figures as markdown."""
    print(
        "\n| collections | count | per s | CPU ms total | longest ms |\n|---|---:|---:|---:|---:|"
    )
    for generation, gc in figures["gc"].items():
        print(
            f"| generation {generation} | {gc['count']} | {gc['count'] / seconds:.1f}"
            f" | {gc['total_ms']:.1f} | {gc['longest_ms']:.2f} |"
        )
    print(f"\nobjects frozen out of the collector: {figures['gc_frozen_objects']:,}")
    busy = {name: cpu for name, cpu in figures["threads_cpu_s"].items() if cpu > 0}
    print(f"threads' CPU seconds in the window: {busy}")
    if not figures["turns"]:
        return
    print(f"\nturns of the loop by CPU: {figures['turns']}")
    print(f"callbacks by CPU: {figures['callbacks']}")
    slow = figures["slow_callbacks"]
    answers = sum(total for name, _, total, _ in slow if name == ANSWERS)
    others = sum(total for name, _, total, _ in slow if name != ANSWERS)
    print(
        f"\ncallbacks of 0.5 ms or more: answering {answers:.0f} ms, everything else"
        f" {others:.0f} ms ({others / answers:.1%} of answering)"
        if answers
        else ""
    )
    print("\n| callback (>= 0.5 ms CPU) | count | per s | CPU ms total | longest ms |")
    print("|---|---:|---:|---:|---:|")
    for name, count, total, longest in slow[:15]:
        print(f"| {name} | {count} | {count / seconds:.1f} | {total:.1f} | {longest:.2f} |")
    print("\n| turns of 3 ms CPU or more, by what else ran in them | count | per s |")
    print("|---|---:|---:|")
    for name, count, _ in figures["long_turns"][:15]:
        print(f"| {name} | {count} | {count / seconds:.1f} |")


if __name__ == "__main__":
    main()
