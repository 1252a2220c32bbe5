"""The OFREP fast path's per-request CPU in process: framing, evaluation and encoding.

What `bench_ofrep.py` measures over sockets, without the sockets, the kernel and the rest of
a worker: `--connections` `FastPath` connections on a transport that keeps what is written,
each handed one request per loop turn as `data_received` would, answered by
`Connections.answer_ready` as a worker answers a turn. Three answers, interleaved round by
round in one process (so a shared machine's load hits all alike):

(e) the constant answer, as bench_ofrep.py's (e): framing and encoding only;
(b) `OfrepApi.evaluate_at_once` on the real evaluation path (FlagTable, LiveFlags,
    Evaluator, Credentials), as a worker answers bench_ofrep.py's request;
(b0) the same with each body parsed by `parse_context` (no `Contexts` memo): the path
    before stop 21.

CPU time (`time.process_time`) per request; the median and the least of `--rounds`.

    .venv/bin/python benchmarks/bench_ofrep_path.py [--rounds 15] [--turns 1000]
        [--connections 64] [--users 0] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson
from bench_ofrep import CONTEXT, FLAG, FLAG_KEY
from prometheus_client import CollectorRegistry

from app.evaluation.evaluator import Evaluator
from app.evaluation.live_flags import LiveFlags
from app.evaluation.stats import EvaluationStats
from app.experiments.exposures import exposure_channel
from app.infra.metrics import Metrics
from app.infra.records import AppliedChange, ChangeOp
from app.infra.settings import Settings
from app.web.auth import Credentials
from app.web.change_feed import ChangeFeed
from app.web.fast_path import Connections, FastPath
from app.web.ofrep import OfrepApi
from app.web.ofrep_wire import parse_context
from tables.flags import FlagTable
from tables.replication import FlagReplication

SDK_KEY = "bench-path-key"
REQUEST = (
    b"POST /ofrep/v1/evaluate/flags/%s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    b"Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s"
)


class Transport:
    """What FastPath writes to, kept (the last write) and counted."""

    def __init__(self) -> None:
        self.writes = 0
        self.last = b""

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.last = data

    def is_closing(self) -> bool:
        return False


def requests(users: int) -> list[bytes]:
    """The requests sent in turn: one body, or one per user (as bench_ofrep.py's --users)."""
    bodies = [orjson.dumps(CONTEXT)]
    if users:
        bodies = [
            orjson.dumps({"context": {**CONTEXT["context"], "targetingKey": f"user-{n}"}})
            for n in range(users)
        ]
    return [REQUEST % (FLAG_KEY.encode(), SDK_KEY.encode(), len(body), body) for body in bodies]


def api_on(tmp: Path) -> OfrepApi:
    """A worker's OFREP API over a real flag table holding the benchmark's flag."""
    os.environ["FLAGSTREAM_SDK_KEYS"] = f"{SDK_KEY}=bench"
    os.environ["FLAGSTREAM_SHED_LOOP_LAG_MS"] = "0"  # as bench_ofrep.py's workers
    settings = Settings.from_env()
    table = FlagTable(tmp, history_depth=10, stream_depth=10, change_id_depth=10)
    table.open()
    flag: dict[str, Any] = FLAG
    change = AppliedChange("c1", "bench", FLAG_KEY, ChangeOp.PUT, 1, 1, flag, "me", 1.0, 1.0)
    table.apply(0, 1, change)
    metrics = Metrics(CollectorRegistry())
    live = LiveFlags(table)
    evaluator = Evaluator(live, exposure_channel(settings, metrics), EvaluationStats())
    replication = FlagReplication(settings, table, metrics)
    replication.ready.set()
    credentials = Credentials(settings)
    return OfrepApi(
        settings, credentials, table, live, replication, evaluator, ChangeFeed(metrics), metrics
    )


def connections(answer: Callable[..., Any], admits: Callable[..., bool], n: int) -> Any:
    shared = Connections(Metrics(CollectorRegistry()))
    opened = []
    for _ in range(n):
        connection = FastPath(lambda: None, answer, admits, 65536, shared, None)  # type: ignore[arg-type,return-value]
        connection.connection_made(Transport())  # type: ignore[arg-type]
        opened.append(connection)
    return shared, opened


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--turns", type=int, default=1000, help="loop turns per round")
    parser.add_argument("--connections", type=int, default=64, help="requests per turn")
    parser.add_argument("--users", type=int, default=0, help="bodies cycled (0: one body)")
    parser.add_argument("--quick", action="store_true", help="5 rounds of 300 turns")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.turns = 5, 300
    api = api_on(Path(tempfile.mkdtemp(prefix="bench-ofrep-path-")))
    before = api_on(Path(tempfile.mkdtemp(prefix="bench-ofrep-path-")))
    before.contexts = parse_context  # type: ignore[assignment]
    sent = requests(args.users)
    body = sent[0].partition(b"\r\n\r\n")[2]
    constant = api.evaluate_at_once(SDK_KEY, FLAG_KEY, body)
    assert constant is not None and constant[0] == 200, constant

    def answer_constant(token: str | None, key: str, raw: bytes) -> tuple[int, bytes]:
        return constant

    servers = {
        "(e) constant answer": connections(answer_constant, api.admits, args.connections),
        "(b0) before (parse_context)": connections(
            before.evaluate_at_once, before.admits, args.connections
        ),
        "(b) evaluate_at_once": connections(api.evaluate_at_once, api.admits, args.connections),
    }
    figures: dict[str, list[float]] = {name: [] for name in servers}
    n = 0
    for round_ in range(args.rounds + 1):  # the first round warms up
        for name, (shared, opened) in servers.items():
            started = time.process_time()
            for _ in range(args.turns):
                for connection in opened:
                    connection._inbox = sent[n % len(sent)]
                    n += 1
                    shared.ready.append(connection)
                shared.answer_ready()
            used = time.process_time() - started
            if round_:
                figures[name].append(used / (args.turns * args.connections) * 1e6)
        for _, opened in servers.values():
            transport: Any = opened[0]._transport
            assert transport.last.endswith(constant[1])
    print(
        f"{args.connections} connections x {args.turns} turns, {args.rounds} rounds,"
        f" {args.users or 1} bod{'ies' if args.users else 'y'};"
        f" load average {os.getloadavg()[0]:.2f}"
    )
    print("| answer | CPU µs/request, median | least |")
    print("|---|---:|---:|")
    for name, runs in figures.items():
        print(f"| {name} | {statistics.median(runs):.2f} | {min(runs):.2f} |")
    constant_us = statistics.median(figures["(e) constant answer"])
    for name in list(servers)[1:]:
        print(f"{name} beyond (e): {statistics.median(figures[name]) - constant_us:.2f} µs")


if __name__ == "__main__":
    asyncio.run(main())
