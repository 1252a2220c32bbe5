"""A 10x spike of OFREP requests: shed, don't drown (issue 11, item 7).

One run, two workers on one embedded broker, each driven in turn by the same paced load:

(a) reference: a worker that never sheds (`FLAGSTREAM_SHED_LOOP_LAG_MS=0`): what the spike
    does to a worker whose only queue is the kernel's;
(b) flagstream: a worker as deployed (shedding past `--shed-ms` of event-loop lag, 429 with
    `Retry-After`, `app/web/overload.py`).

The load is Debian's `wrk`, paced by a Lua script (`PACED_LUA`; wrk2 is not packaged, and a
Python generator on the same 2 cores competed with the worker for them: the first version of
this benchmark queued its requests in its own event loop). One connection per wrk thread
(`--connections`, 1,000), so the script knows which request an answer is for; the run's
requests are one open-loop schedule (slot n due at its time in the phase, sent by connection
n mod N): a normal rate for `--before` seconds, ten times it for `--spike` seconds, the normal
rate again for `--after` seconds. Latency counts from when a request was due, so a slot whose
connection still waits for its previous answer is late by that wait (no coordinated
omission); one not sent, or not answered, within `--timeout` of its due time is a timeout.
The connections bound what is in flight: 1,000 is over the spike's rate times the wait a
shedding worker holds its answered requests (~4,400/s x ~0.1 s), so the clients' own queue is
the never-shedding worker's doing. wrk's own CPU (its share of a core) is printed: ~0.1 at
256 connections, ~0.2 at 1,000 (a loaded machine). The clients ignore `Retry-After` (the
worst case: the official providers back off).

The request is a bulk evaluation (`POST /ofrep/v1/evaluate/flags`, what a web or mobile SDK
sends when an app opens) of an environment of `--flags` targeted flags, so one core of the
worker is overloaded at a rate the generator offers cheaply; `--path single` spikes
single-flag evaluations (the fast path) instead (the summary prints offered, sent and
answered). The normal rate is `--rate`, or
`--utilisation` (0.3) of the worker's capacity measured with wrk first: the spike is then 3x
what the worker can answer.

Per phase and worker: requests offered, sent and answered 200, p50/p99 of answered requests
from their due time, p50/p99 of the server's part (send to answer, any status), share shed
(429), timeouts, the worker's RSS (max), and the recovery time: from the end of the spike to
the first second whose p99 is within 1.25x of the before phase's (nothing shed, no timeout);
the worker's and wrk's CPU (share of a core) over the run; then how long
the worker stays busy once the load has stopped (answers to requests nobody waits for). The
next worker is driven only once the previous one is idle. Figures taken on a loaded machine
mean little: the lag the worker sheds on includes the time the OS does not run it (print the
load average beside them).

    .venv/bin/python benchmarks/bench_spike.py            # 20 s, 30 s spike, 30 s after
    .venv/bin/python benchmarks/bench_spike.py --quick    # 5 s, 10 s spike, 10 s after

Bulk requests are answered (and shed) by the OFREP fast path (`app/web/fast_path.py`); with
`--worker-env FLAGSTREAM_OFREP_FAST_PATH=false` both workers answer them through aiohttp, as
every worker did before the fast path took bulk requests (a 429 there cost ~4x the fast
path's): the run to compare against, capacity line included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
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
from tests.conftest import SDK_KEY, Worker

ENV = "bench"
CONTEXT = {"context": {"targetingKey": "user-1234", "email": "ann@example.com", "plan": "pro"}}
REF, OURS = "(a) never sheds", "(b) flagstream (sheds)"


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


# The load generator: wrk with one connection per thread, each sending the slots of a shared
# open-loop schedule (slot n of the run goes to connection n mod N at its due time). A slot
# due while its connection still waits for an answer is sent late, its latency counting from
# when it was due (no coordinated omission); one that could not be sent within the timeout,
# or whose answer came later than it, is a timeout (a client would have given up). Per second
# of due time: counts by outcome and a histogram of the 200s' latency (0.1 ms buckets).
PACED_LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } spike_timespec;
int clock_gettime(int clock, spike_timespec *tp);
]]
local ts = ffi.new("spike_timespec")
local function now()
  ffi.C.clock_gettime(0, ts)  -- CLOCK_REALTIME: the same start in every thread
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

local OK, SHED, OTHER, TIMEOUT, SENT = 1, 2, 3, 4, 5
local start, timeout, connections, phases
local n, due, inflight, sent
local req

function init(args)
  start, timeout, connections = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  phases = {}
  local at, first = start, 0
  for rate, seconds in string.gmatch(args[4], "([%d.]+):([%d.]+)") do
    rate, seconds = tonumber(rate), tonumber(seconds)
    table.insert(phases, {at = at, first = first, rate = rate, count = math.floor(rate * seconds)})
    at, first = at + seconds, first + math.floor(rate * seconds)
  end
  n = id
  counts, hist, served = {}, {}, {}
  req = wrk.format()
end

local function due_of(slot)
  for _, p in ipairs(phases) do
    if slot < p.first + p.count then return p.at + (slot - p.first) / p.rate end
  end
  return nil
end

local function count(at, kind)
  local key = math.floor(at - start) * 10 + kind
  counts[key] = (counts[key] or 0) + 1
end

function delay()
  local t = now()
  while true do
    local slot = due_of(n)
    if slot == nil then return 3600000 end  -- the schedule is over: idle until wrk stops
    n = n + connections
    if t - slot <= timeout then
      due = slot
      local ms = (slot - t) * 1000
      if ms < 0 then return 0 end
      return math.floor(ms)
    end
    count(slot, TIMEOUT)  -- its connection was busy for longer than a client waits
  end
end

function request()
  if due == nil then  -- wrk sends a connection's first request at once: a warm-up, not counted
    inflight = false
    return req
  end
  if inflight then  -- the connection was lost before its answer (wrk reconnected)
    count(inflight, OTHER)
  end
  inflight, sent = due, now()
  count(due, SENT)
  return req
end

function response(status, headers, body)
  if inflight == false then
    inflight = nil
    return
  end
  local t = now()
  local latency = math.max(0, t - inflight)  -- a timer may fire a little early
  local key = math.floor(inflight - start) * 100000 + math.floor((t - sent) * 10000)
  served[key] = (served[key] or 0) + 1  -- the server's part: from the send, any status
  if latency > timeout then
    count(inflight, TIMEOUT)
  elseif status == 200 then
    count(inflight, OK)
    local key = math.floor(inflight - start) * 100000 + math.floor(latency * 10000)
    hist[key] = (hist[key] or 0) + 1
  elseif status == 429 then
    count(inflight, SHED)
  else
    count(inflight, OTHER)
  end
  inflight = nil
end

function done(summary, latency, requests)
  local c, h, s = {}, {}, {}
  for _, thread in ipairs(threads) do
    for k, v in pairs(thread:get("counts")) do c[k] = (c[k] or 0) + v end
    for k, v in pairs(thread:get("hist")) do h[k] = (h[k] or 0) + v end
    for k, v in pairs(thread:get("served")) do s[k] = (s[k] or 0) + v end
    local left = thread:get("inflight")  -- never answered before wrk stopped
    if left then
      local key = math.floor(left - start) * 10 + TIMEOUT
      c[key] = (c[key] or 0) + 1
    end
  end
  for k, v in pairs(c) do io.write("C ", k, " ", v, "\n") end
  for k, v in pairs(h) do io.write("H ", k, " ", v, "\n") end
  for k, v in pairs(s) do io.write("S ", k, " ", v, "\n") end
  io.write("E ", summary.errors.connect, " ", summary.errors.read, " ", summary.errors.write,
           " ", summary.errors.timeout, "\n")
end
"""


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


def post_lua() -> str:
    """wrk's request: the bulk (or single-flag) evaluation with the bench's SDK key."""
    return (
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(CONTEXT))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {SDK_KEY}"\n'
    )


def capacity(url: str, workdir: Path, seconds: int) -> float:
    """Requests/s the worker answers to wrk with 64 connections (closed loop)."""
    script = workdir / "post.lua"
    script.write_text(post_lua())
    command = ["wrk", "-t1", "-c64", f"-d{seconds}s", "-s", str(script), url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]


def paced_script(workdir: Path) -> Path:
    """The wrk script: the request (as the capacity probe sends it) and the paced schedule."""
    script = workdir / "paced.lua"
    script.write_text(post_lua() + PACED_LUA)
    return script


def run_paced(url: str, script: Path, phases: list[tuple[str, float, int]], args: Any) -> Any:
    """Run wrk on the schedule; (per-second rows, start wall time, wrk's CPU seconds, errors).

    A row is [200s, 429s, other statuses, sent, timeouts, {latency of the 200s from when due,
    in 0.1 ms: count}, {time from the send to the answer, any status: count}].
    """
    lead_s = 1.0 + args.connections / 500  # wrk's threads start and connect before slot 0
    start = time.time() + lead_s
    seconds = sum(s for _, _, s in phases)
    schedule = ",".join(f"{rate}:{s}" for _, rate, s in phases)
    duration = int(lead_s + seconds + args.timeout + 2)
    command = [
        "wrk",
        f"-t{args.connections}",
        f"-c{args.connections}",
        f"-d{duration}s",
        "--timeout",
        "60s",  # wrk's own count; the script decides what a timeout is
        "-s",
        str(script),
        url,
        "--",
        f"{start:.6f}",
        str(args.timeout),
        str(args.connections),
        schedule,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"wrk failed ({done.returncode}): {done.stderr.strip()} {done.stdout[-2000:]}")
    output = done.stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rows: list[list[Any]] = [
        [0, 0, 0, 0, 0, {}, {}] for _ in range(seconds + int(args.timeout) + 2)
    ]
    errors = ""
    for line in output.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "C":
            key, value = map(int, rest.split())
            second, outcome = divmod(key, 10)
            if 0 <= second < len(rows):
                rows[second][(0, 1, 2, 4, 3)[outcome - 1]] += value
        elif kind in ("H", "S"):
            key, value = map(int, rest.split())
            second, tenths = divmod(key, 100000)
            if 0 <= second < len(rows):
                histogram = rows[second][5 if kind == "H" else 6]
                histogram[tenths] = histogram.get(tenths, 0) + value
        elif kind == "E":
            errors = rest
    return rows, start, cpu, errors


def percentile(histogram: dict[int, int], share: float) -> float:
    """The `share` percentile of a histogram of latencies in 0.1 ms buckets, in ms."""
    total = sum(histogram.values())
    if not total:
        return float("nan")
    rank, seen = share * total, 0
    for tenths in sorted(histogram):
        seen += histogram[tenths]
        if seen > rank:
            return tenths / 10
    return max(histogram) / 10


def merged(histograms: list[dict[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for histogram in histograms:
        for tenths, n in histogram.items():
            out[tenths] = out.get(tenths, 0) + n
    return out


def drive(worker: Worker, script: Path, phases: list[tuple[str, float, int]], args: Any) -> Any:
    """Run the paced load against `worker`; per phase figures and the recovery time."""
    assert worker.process is not None
    pid = worker.process.pid
    sampler = RssSampler(pid)
    sampler.start()
    worker_cpu = cpu_seconds(pid)
    started = time.monotonic()
    stats, start_wall, wrk_cpu, errors = run_paced(worker.url + args.url_path, script, phases, args)
    wall = time.monotonic() - started
    worker_cpu = cpu_seconds(pid) - worker_cpu
    drained = drain(pid)
    sampler.stopping.set()
    sampler.join()
    figures: dict[str, dict[str, float]] = {}
    first = 0
    per_second_p99 = [percentile(row[5], 0.99) for row in stats]
    for name, rate, seconds in phases:
        rows = stats[first : first + seconds]
        ok = merged([row[5] for row in rows])
        served = merged([row[6] for row in rows])
        answered = sum(row[0] for row in rows)
        shed = sum(row[1] for row in rows)
        other = sum(row[2] for row in rows)
        timeouts = sum(row[4] for row in rows)
        total = answered + shed + other + timeouts
        window = (start_wall + first, start_wall + first + seconds)
        rss = [mb for at, mb in sampler.samples if window[0] <= at < window[1]]
        figures[name] = {
            "offered_per_s": rate,
            "sent_per_s": sum(row[3] for row in rows) / seconds,
            "answered_per_s": answered / seconds,
            "p50_ms": percentile(ok, 0.5),
            "p99_ms": percentile(ok, 0.99),
            "served_p50_ms": percentile(served, 0.5),
            "served_p99_ms": percentile(served, 0.99),
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
        row = stats[second]
        if per_second_p99[second] <= target and row[1] == 0 and row[4] == 0:
            recovery = float(second - before_s - spike_s)
            break
    return {
        "phases": figures,
        "recovery_s": recovery,
        "drain_s": drained,
        "wrk_core_share": wrk_cpu / wall,
        "worker_core_share": worker_cpu / wall,
        "wrk_errors": errors,
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
    parser.add_argument(
        "--connections", type=int, default=1000, help="wrk connections (one thread each)"
    )
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of both workers (repeatable), e.g. FLAGSTREAM_OFREP_FAST_PATH=false",
    )
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    if args.quick:
        args.before, args.spike, args.after = 5, 10, 10
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: `apt-get install -y wrk` (the capacity probe uses it)")
    path = "/ofrep/v1/evaluate/flags" + ("/flag-0" if args.path == "single" else "")
    args.url_path = path

    workdir = Path(tempfile.mkdtemp(prefix="bench-spike-"))
    kafka_port = free_port()
    broker = start_broker("127.0.0.1", kafka_port, workdir / "broker.log")
    common = {"FLAGSTREAM_SDK_KEYS": f"{SDK_KEY}={ENV}", "FLAGSTREAM_FETCH_MAX_WAIT_MS": "500"}
    common.update(setting.split("=", 1) for setting in args.worker_env)
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
            measured = capacity(workers[REF].url + path, workdir, 3)
            rate = round(measured * args.utilisation)
            print(f"capacity (wrk -c64, 3 s, never-shedding worker): {measured:,.0f} req/s")
        phases = [("before", rate, args.before), ("spike", 10 * rate, args.spike)]
        phases.append(("after", rate, args.after))
        print(f"normal rate {rate:,.0f}/s, spike {10 * rate:,.0f}/s on {path}", flush=True)
        script = paced_script(workdir)
        for name, worker in workers.items():
            results[name] = drive(worker, script, phases, args)
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
            f"{figures['shed_share']:6.1%}  server p50/p99 {figures['served_p50_ms']:.1f}/"
            f"{figures['served_p99_ms']:.1f} ms  timeouts {figures['timeouts']:6,.0f}  RSS "
            f"{figures['rss_max_mb']:6.0f} MB",
            flush=True,
        )
    print(
        f"{name:24} recovery {result['recovery_s']} s; busy {result['drain_s']:.0f} s after"
        f" the load stopped; wrk {result['wrk_core_share']:.2f} of a core, worker "
        f"{result['worker_core_share']:.2f}; wrk errors (connect read write timeout) "
        f"{result['wrk_errors']}",
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
        f" --spike {args.spike} --after {args.after} --shed-ms {args.shed_ms} --connections "
        f"{args.connections}{''.join(f' --worker-env {e}' for e in args.worker_env)}; normal "
        f"{rate:,.0f}/s, spike {10 * rate:,.0f}/s, client timeout {args.timeout} s"
    )
    print(
        "| worker | phase | offered/s | sent/s | answered 200/s | p50 ms | p99 ms (200s) | shed"
        " | timeouts | RSS max MB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, result in results.items():
        for phase, f in result["phases"].items():
            print(
                f"| {name} | {phase} | {f['offered_per_s']:,.0f} | {f['sent_per_s']:,.0f} | "
                f"{f['answered_per_s']:,.0f} | {f['p50_ms']:.1f} | "
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
        f"{ref['drain_s']:.0f} s (goal: bounded p99, 429s not timeouts, full recovery); "
        f"wrk's own share of a core {ours['wrk_core_share']:.2f} / {ref['wrk_core_share']:.2f}"
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
