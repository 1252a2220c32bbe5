"""The replica's apply of changelog records, in process: the applying thread's CPU per record.

No broker: `--records` (6,000) generated flag changes (`benchmarks/flag_corpus.py`) of
`--environments` (3) environments are built as the records a fetch returns (value, the
decider's meta header, offset), and a `FlagReplication` applies them with its `_apply` into a
fresh RocksDB table, the worker's listeners attached (compiled flags, the change feed, writers
waiting for outcomes). Two modes, each a fresh table per round (`--rounds`, 9; the median,
and the least): catch-up (before ready, as a starting worker: its RocksDB writes are queued,
the collector frozen after each slice) and tail (after ready: each slice written as applied).
Each fetch is applied by the tail's own `_apply` (slices, a loop turn between them), as in the
worker. For the catch-up, the CPU of writing what it queued (`FlagTable.persist_slice`, after
ready, in the background) is measured on its own. The
reference is the cost of merely walking the records (reading each header), in the same run.
`--signed` signs the records with a changelog key the replica holds (app.infra.changelog_signing,
as a worker with FLAGSTREAM_CHANGELOG_KEY) and also reports the verification alone per record.

    .venv/bin/python benchmarks/bench_apply.py [--records 6000] [--environments 3]
        [--rounds 9] [--quick] [--signed] [--profile] [--json out.json]

`--profile` prints a cProfile of one catch-up round (tottime, top 25).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.control.outcomes import Outcomes
from app.evaluation.live_flags import LiveFlags
from app.infra.changelog_signing import ChangelogSigner
from app.infra.metrics import Metrics
from app.infra.records import AppliedChange, ChangeOp, changelog_headers, dumps
from app.infra.settings import Settings, changelog_signer
from app.infra.topics import Topics
from app.web.change_feed import ChangeFeed
from benchmarks.flag_corpus import generated_flags
from tables.flags import FlagTable
from tables.replication import FETCH_MAX_RECORDS, FlagReplication


class Record(NamedTuple):
    """What a changelog fetch returns, as much of it as the replica reads."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    offset: int


def records(count: int, environments: int, seed: int) -> list[Record]:
    """`count` changes across `environments` (one partition), a few versions per flag."""
    per_env = count // environments
    out: list[Record] = []
    now = time.time()
    for n in range(environments):
        environment = f"env-{n}"
        corpus = list(generated_flags(max(1, per_env // 2), seed + n).items())
        versions: dict[str, int] = {}
        for seq in range(1, per_env + 1):
            key, definition = corpus[(seq - 1) % len(corpus)]
            version = versions[key] = versions.get(key, 0) + 1
            change = AppliedChange(
                str(uuid.uuid4()), environment, key, ChangeOp.PUT, seq, version,
                definition, "bench", now, now, 0, len(out),
            )  # fmt: skip
            value = dumps(change.to_json())
            out.append(Record(environment.encode(), value, changelog_headers(change), len(out)))
    return out


def one_round(
    settings: Settings, workdir: Path, batch: list[Record], *, ready: bool
) -> tuple[float, float, float]:
    """(CPU, wall) seconds to apply `batch` fetch by fetch into a fresh table, and the CPU
    seconds to write what the apply queued (0 after ready: nothing is queued)."""
    path = Path(tempfile.mkdtemp(dir=workdir))
    table = FlagTable(
        path,
        history_depth=settings.history_depth,
        stream_depth=settings.stream_depth,
        change_id_depth=settings.change_id_depth,
    )
    table.open()
    metrics = Metrics(CollectorRegistry())
    replication = FlagReplication(settings, table, metrics)
    if ready:
        replication.ready.set()
    live = LiveFlags(table, compile_after=replication.ready)
    feed = ChangeFeed(metrics)
    table.listen_batches(feed.publish_all)
    replication.on_applied(Outcomes(table).heard_applied)
    gc.collect()

    async def apply_all() -> tuple[float, float]:
        # In a running loop, as in the worker (the compiler task is created, not run).
        # The applying thread's CPU: RocksDB's flushes run on threads of their own.
        cpu, wall = time.thread_time(), time.perf_counter()
        # As the tail applies a fetch: slices, a turn of the loop between them, and (before
        # ready) the collector frozen after each (without it, full collections walking the
        # growing table were up to half of the figure: the worker does not pay them).
        for start in range(0, len(batch), FETCH_MAX_RECORDS):
            await replication._apply(0, batch[start : start + FETCH_MAX_RECORDS])
        return time.thread_time() - cpu, time.perf_counter() - wall

    cpu, wall = asyncio.run(apply_all())
    assert live.queued() >= 0
    persist = time.thread_time()
    while table.persist_slice():
        pass
    persist = time.thread_time() - persist
    table.close()
    shutil.rmtree(path)
    return cpu, wall, persist


def signed(settings: Settings, batch: list[Record]) -> list[Record]:
    """`batch` with the signature the decider holding the settings' key writes (partition 0)."""
    signer, topic = changelog_signer(settings), Topics.of(settings).flags_changelog
    return [r._replace(headers=signer.headers(topic, 0, r.key, r.value, r.headers)) for r in batch]


def verify_s(signer: ChangelogSigner, topic: str, batch: list[Record]) -> float:
    """CPU seconds of the replica's check of every record's signature, alone."""
    cpu = time.process_time()
    for record in batch:
        signer.verify(topic, 0, record.key, record.value, record.headers)
    return time.process_time() - cpu


def walk_s(batch: list[Record]) -> float:
    """The reference: CPU seconds to walk the records and read each one's header."""
    cpu = time.process_time()
    for record in batch:
        for _name, _meta in record.headers:
            pass
    return time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=6_000)
    parser.add_argument("--environments", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--signed", action="store_true", help="records signed, the key held")
    parser.add_argument("--profile", action="store_true", help="cProfile one catch-up round")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.rounds = 3
    if args.signed:
        os.environ["FLAGSTREAM_CHANGELOG_KEY"] = os.urandom(32).hex()
    settings = Settings.from_env()
    batch = records(args.records, args.environments, args.seed)
    verify_us = 0.0
    if args.signed:
        batch = signed(settings, batch)
        topic = Topics.of(settings).flags_changelog
        verify_us = verify_s(changelog_signer(settings), topic, batch) / len(batch) * 1e6
    workdir = Path(tempfile.mkdtemp(prefix="bench-apply-"))
    try:
        one_round(settings, workdir, batch, ready=False)  # warm-up
        figures: dict[str, Any] = {}
        for mode, ready in (("catch-up", False), ("tail", True)):
            runs = [one_round(settings, workdir, batch, ready=ready) for _ in range(args.rounds)]
            figures[mode] = {
                "cpu_us_per_record": statistics.median(c for c, _, _ in runs) / len(batch) * 1e6,
                "min_cpu_us_per_record": min(c for c, _, _ in runs) / len(batch) * 1e6,
                "wall_us_per_record": statistics.median(w for _, w, _ in runs) / len(batch) * 1e6,
                "persist_cpu_us_per_record": statistics.median(p for _, _, p in runs)
                / len(batch)
                * 1e6,
            }
            gc.unfreeze()
        reference = walk_s(batch) / len(batch) * 1e6
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            one_round(settings, workdir, batch, ready=False)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"{len(batch):,} records{' (signed)' if args.signed else ''}, "
        f"{args.environments} environments, median of {args.rounds}"
    )
    print(
        "| mode | CPU us/record (min) | wall us/record | queued writes after ready, CPU us/record |"
        "\n|---|---|---|---|"
    )
    for mode, row in figures.items():
        cpu, least = row["cpu_us_per_record"], row["min_cpu_us_per_record"]
        print(
            f"| {mode} | {cpu:.1f} ({least:.1f}) | {row['wall_us_per_record']:.1f} "
            f"| {row['persist_cpu_us_per_record']:.1f} |"
        )
    print(f"reference (walk the records, read each header): {reference:.2f} us/record")
    if args.signed:
        print(f"of which the signature check (HMAC-SHA256): {verify_us:.2f} us/record")
    print(
        f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}"
    )
    if args.json:
        summary = {"records": len(batch), "reference_us": reference, **figures}
        if args.signed:
            summary["verify_us"] = verify_us
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
