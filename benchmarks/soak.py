"""Soak: evaluations, flag changes and exposures together for minutes, on one worker.

A steady load, not a saturating one, so what is measured is whether the worker holds up over
time: throughput and p99 per interval, the worker's RSS (flat once warm), and how far behind
each stream is. The reference is the run's own first warm interval: the last interval's
figures are reported as a ratio of it (a leak or a growing backlog shows as a drift).

* OFREP: `wrk` at a fixed rate (`--rate` requests/s spread over `--connections`, each waiting
  its share between requests), evaluating an experiment flag for a cycling targeting key, so
  every evaluation also produces an exposure to Kafka;
* Kafka evaluation: one client sending `--kafka-rate` requests/s in batches of 20, waiting
  for each result (its wait is the evaluation consumer's lag);
* flag changes: one PUT a second to one of 50 flags through the admin API, which answers once
  the worker's table holds the change (its latency is the changelog's lag).

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--interval 30] [--rate 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.evaluation.client import EvaluationClient
from app.infra.broker import free_port, start_broker, stop
from app.infra.topics import Topics
from tests.conftest import SDK_KEY, Worker

APP_ID = "soak"  # the worker's, and its topics' prefix
EXPERIMENT = {
    "state": "ENABLED",
    "variants": {"control": "control", "treatment": "treatment"},
    "defaultVariant": "control",
    "targeting": {"fractional": [["control", 50], ["treatment", 50]]},
    "metadata": {"experiment": True},
}
CHANGED = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}
# wrk: a new targeting key per request, and a pause before each so the rate is steady.
WRK_SCRIPT = """
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, '{{"context":{{"targetingKey":"user-' .. (n % 100000) .. '"}}}}')
end
delay = function()
  return {delay_ms}
end
"""


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def to_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, script: Path, seconds: int, connections: int) -> tuple[float, float, int]:
    """(requests/s, p99 ms, errors) of one wrk run."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script)]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p99 = to_ms(re.search(r"^\s+99%\s+(\S+)$", output, re.MULTILINE).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    return rate, p99, (int(errors.group(1)) if errors else 0) + (1 if socket_errors else 0)


def exposures(worker: Worker) -> dict[str, float]:
    text = worker.metrics()
    pattern = r'flagstream_exposures_total\{outcome="(\w+)"\} (\S+)'
    return {outcome: float(value) for outcome, value in re.findall(pattern, text)}


class Side:
    """A background load that records (time, seconds) per operation until stopped."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.failures = 0
        self.done = threading.Event()

    def between(self, start: float, end: float) -> list[float]:
        return [s for t, s in self.samples if start <= t < end]


def changes(worker: Worker, side: Side) -> None:
    admin = worker.admin()
    i = 0
    while not side.done.is_set():
        started = time.monotonic()
        try:
            admin.put("soak", f"flag-{i % 50}", {**CHANGED, "metadata": {"i": i}})
            side.samples.append((started, time.monotonic() - started))
        except Exception:
            side.failures += 1
        i += 1
        side.done.wait(max(0.0, 1.0 - (time.monotonic() - started)))


def kafka(broker: str, rate: int, side: Side) -> None:
    async def run() -> None:
        topics = Topics.named(APP_ID)
        async with EvaluationClient(
            broker, topics=topics, timeout_s=30, fetch_max_wait_ms=10
        ) as client:
            batch, i = 20, 0
            while not side.done.is_set():
                started = time.monotonic()
                contexts = [{"targetingKey": f"k{i + n}"} for n in range(batch)]
                try:
                    results = await client.evaluate_many("soak", contexts, ["experiment"])
                    if any(r.error for r in results):
                        side.failures += 1
                    side.samples.append((started, time.monotonic() - started))
                except TimeoutError:
                    side.failures += 1
                i += batch
                await asyncio.sleep(max(0.0, batch / rate - (time.monotonic() - started)))

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--interval", type=int, default=30, help="seconds per report line")
    parser.add_argument("--rate", type=int, default=4000, help="OFREP requests/s (target)")
    parser.add_argument("--connections", type=int, default=40)
    parser.add_argument("--kafka-rate", type=int, default=400, help="Kafka requests/s")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: `apt-get install -y wrk` (the soak drives it)")

    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    port = free_port()
    brokers = f"127.0.0.1:{port}"
    broker = start_broker("127.0.0.1", port, workdir / "broker.log")
    worker = Worker(brokers, workdir / "worker", APP_ID, FLAGSTREAM_SDK_KEYS=f"{SDK_KEY}=soak")
    worker.start()
    assert worker.process is not None
    pid = worker.process.pid
    script = workdir / "soak.lua"
    script.write_text(
        WRK_SCRIPT.format(key=SDK_KEY, delay_ms=int(1000 * args.connections / args.rate))
    )
    url = f"{worker.url}/ofrep/v1/evaluate/flags/experiment"
    sides = {"changes": Side(), "kafka": Side()}
    threads = [
        threading.Thread(target=changes, args=(worker, sides["changes"]), daemon=True),
        threading.Thread(
            target=kafka, args=(brokers, args.kafka_rate, sides["kafka"]), daemon=True
        ),
    ]
    rows: list[dict[str, Any]] = []
    try:
        worker.admin().put("soak", "experiment", EXPERIMENT)
        for thread in threads:
            thread.start()
        print(
            f"# {platform.node()}: {platform.processor() or platform.machine()}, "
            f"python {platform.python_version()}, load {Path('/proc/loadavg').read_text()[:14]}"
        )
        print("t_s  ofrep_rps  ofrep_p99_ms  kafka_p99_ms  put_p99_ms  rss_mb  exposures  dropped")
        started = time.monotonic()
        before = exposures(worker)
        while time.monotonic() - started < args.minutes * 60:
            begin = time.monotonic()
            rate, p99, errors = wrk(url, script, args.interval, args.connections)
            end = time.monotonic()
            now = exposures(worker)
            row = {
                "t": round(end - started),
                "rps": rate,
                "p99": p99,
                "errors": errors,
                "kafka_p99": 1000 * percentile(sides["kafka"].between(begin, end), 0.99),
                "put_p99": 1000 * percentile(sides["changes"].between(begin, end), 0.99),
                "rss": rss_mb(pid),
                "produced": now.get("produced", 0) - before.get("produced", 0),
                "dropped": now.get("dropped", 0) - before.get("dropped", 0),
            }
            before = now
            rows.append(row)
            print(
                f"{row['t']:>4}  {rate:>9.0f}  {p99:>12.2f}  {row['kafka_p99']:>12.1f}  "
                f"{row['put_p99']:>10.1f}  {row['rss']:>6.1f}  {row['produced']:>9.0f}  "
                f"{row['dropped']:>7.0f}",
                flush=True,
            )
    finally:
        for side in sides.values():
            side.done.set()
        for thread in threads:
            thread.join(timeout=60)
        worker.stop()
        stop(broker)

    warm = rows[1] if len(rows) > 2 else rows[0]  # the first interval includes the warm-up
    last = rows[-1]
    rss_after_warm = [row["rss"] for row in rows[1:]] or [warm["rss"]]
    print()
    print(f"duration {rows[-1]['t']} s, {len(rows)} intervals of {args.interval} s")
    print(
        f"OFREP: median {statistics.median(r['rps'] for r in rows):.0f} req/s, "
        f"last/warm {last['rps'] / warm['rps']:.2f}x; p99 median "
        f"{statistics.median(r['p99'] for r in rows):.2f} ms, last/warm "
        f"{last['p99'] / warm['p99']:.2f}x; non-2xx {sum(r['errors'] for r in rows)}"
    )
    print(
        f"RSS: warm {warm['rss']:.1f} MB, last {last['rss']:.1f} MB, "
        f"range after warm-up {min(rss_after_warm):.1f}-{max(rss_after_warm):.1f} MB"
    )
    print(
        f"Kafka evaluation: {len(sides['kafka'].samples)} batches of 20, failures "
        f"{sides['kafka'].failures}, p99 over the run "
        f"{1000 * percentile([s for _, s in sides['kafka'].samples], 0.99):.1f} ms"
    )
    print(
        f"Flag changes: {len(sides['changes'].samples)}, failures {sides['changes'].failures}, "
        f"p99 {1000 * percentile([s for _, s in sides['changes'].samples], 0.99):.1f} ms"
    )
    print(
        f"Exposures: produced {sum(r['produced'] for r in rows):.0f}, "
        f"dropped {sum(r['dropped'] for r in rows):.0f}"
    )


if __name__ == "__main__":
    main()
