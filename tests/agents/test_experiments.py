"""The attribution service over the real broker: what it publishes to `experiment-stats`
equals the truth computed from the input, after redeliveries, a SIGKILL and a rebalance."""

from __future__ import annotations

import random
import re
import signal
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.experiments.attribution import Event, Exposure, Totals
from app.experiments.exposures import to_json as exposure_json
from app.experiments.metric_events import MetricEvent
from app.experiments.metric_events import to_json as event_json
from app.experiments.partials import Partial, decode_stats_record
from app.experiments.results import merge
from app.infra.topics import Topics
from tests.app.experiments.test_attribution import observed, same, truth
from tests.conftest import Worker, own_broker, produce, read_records, wait_until

broker = pytest.fixture(own_broker, name="broker")

PARTITIONS = 8  # FLAGSTREAM_EXPOSURE_PARTITIONS: both sources, the changelog, the stats
APP_ID = "attribution"  # every worker of this module: one group, one set of topics
TOPICS = Topics.named(APP_ID)
WORKER_ENV = {"FLAGSTREAM_ATTRIBUTION_WINDOW_S": "10", "FLAGSTREAM_STATS_PUBLISH_MS": "200"}
Pair = tuple[str, Exposure | Event]


def experiment_flag() -> dict[str, Any]:
    return {
        "state": "ENABLED",
        "variants": {"a": "a", "b": "b"},
        "defaultVariant": "a",
        "targeting": {"fractional": [["a", 50], ["b", 50]]},
        "metadata": {"experiment": True, "metric.buy": "conversion", "metric.spend": "mean"},
    }


def scenario(
    env: str, experiment: str, subjects: int, seed: int
) -> list[tuple[bytes, bytes, str, Pair]]:
    """Exposures and events of `subjects` people: repeats, crossovers, duplicates, events
    before the exposure and after the window; (key, value, topic, the pair for the truth)."""
    rng = random.Random(seed)
    out = []
    for n in range(subjects):
        subject = f"s{n}-{seed}"
        variant = rng.choice("ab")
        start = rng.uniform(0, 100)
        for k in range(rng.randint(1, 3)):
            seen = variant if rng.random() > 0.05 else "ab"[variant == "a"]  # a crossover
            exposure = Exposure(start + k * rng.uniform(0, 5), uuid.uuid4().hex, seen, 1)
            value = exposure_json(
                (
                    env,
                    experiment,
                    seen,
                    1,
                    subject,
                    exposure.timestamp,
                    "test",
                    exposure.exposure_id,
                    experiment,
                )
            )
            out.append(
                (subject.encode(), orjson.dumps(value), TOPICS.exposures, (subject, exposure))
            )
        for _ in range(rng.randint(0, 4)):
            metric = rng.choice(["buy", "spend"])
            event = Event(
                start + rng.uniform(-3, 14), uuid.uuid4().hex, metric, round(rng.uniform(0, 9), 2)
            )
            value = event_json(
                MetricEvent(env, subject, metric, event.value, event.timestamp, event.event_id)
            )
            record = (subject.encode(), orjson.dumps(value), TOPICS.metric_events, (subject, event))
            out += [record] * (2 if rng.random() < 0.1 else 1)  # a duplicate: the same id
    rng.shuffle(out)
    return out


def send(broker: str, records: list[tuple[bytes, bytes, str, Pair]]) -> None:
    for topic in (TOPICS.exposures, TOPICS.metric_events):
        produce(broker, topic, [(key, value) for key, value, t, _ in records if t == topic])


def published(broker: str, env: str, experiment: str) -> dict[int, Partial]:
    """The newest partial of each source partition of the experiment."""
    newest: dict[int, Partial] = {}
    for record in read_records(broker, TOPICS.experiment_stats, PARTITIONS, idle_s=0.3):
        decoded = decode_stats_record(record.value)
        if isinstance(decoded, Partial) and (decoded.environment, decoded.experiment) == (
            env,
            experiment,
        ):
            newest[decoded.partition] = decoded
    return newest


def merged(broker: str, env: str, experiment: str) -> Totals:
    return merge(p.totals for p in published(broker, env, experiment).values())


def equal_to_truth(broker: str, env: str, experiment: str, pairs: list[Pair]) -> bool:
    return same(observed(merged(broker, env, experiment)), truth(pairs))


def test_the_published_totals_equal_the_truth(
    broker: str, cluster: list[Worker], tmp_path: Path
) -> None:
    worker = Worker(broker, tmp_path / "data", APP_ID, **WORKER_ENV).start()
    cluster.append(worker)
    env, experiment = "sim", "checkout"
    worker.admin().put(env, experiment, experiment_flag())
    records = scenario(env, experiment, 300, seed=1)
    send(broker, records)
    pairs = [pair for *_, pair in records]
    wait_until(lambda: equal_to_truth(broker, env, experiment, pairs), timeout_s=60, interval_s=0.5)


def folded(worker: Worker) -> float:
    pattern = r'^flagstream_attribution_records_total\{outcome="folded",source="\S+"\} (\S+)$'
    return sum(float(m) for m in re.findall(pattern, worker.metrics(), re.MULTILINE))


def owned(worker: Worker) -> float:
    found = re.search(r"^flagstream_attribution_partitions (\S+)$", worker.metrics(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def series(broker: str, env: str, experiment: str) -> Counter[tuple[str, int]]:
    totals = merged(broker, env, experiment)
    return Counter(
        {(v, start): n for v, t in totals.variants.items() for start, n in t.windows.items()}
    )


def test_a_sigkill_mid_stream_and_a_rebalance_onto_a_second_worker_lose_and_double_nothing(
    broker: str, cluster: list[Worker], tmp_path: Path
) -> None:
    """Records flow in while the owner of every partition is killed with SIGKILL, restarted
    from its RocksDB, and joined by a second worker that takes half the partitions from the
    changelog: the published totals equal the truth, every figure and every window."""
    first = Worker(broker, tmp_path / "first", APP_ID, **WORKER_ENV).start()
    cluster.append(first)
    env, experiment = "sim", "checkout"
    first.admin().put(env, experiment, experiment_flag())
    records = scenario(env, experiment, 1500, seed=2)
    chunks = [records[i : i + 150] for i in range(0, len(records), 150)]
    sent = threading.Event()

    def produce_all() -> None:
        for chunk in chunks:
            send(broker, chunk)
        sent.set()

    producer = threading.Thread(target=produce_all)
    producer.start()
    try:
        wait_until(lambda: folded(first) >= 300, timeout_s=60)
        assert not sent.is_set(), "the stream ended before the kill: make it longer"
        first.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        first.process.wait()  # type: ignore[union-attr]
        # The same RocksDB and groups. A SIGKILL sends no LeaveGroup: the broker evicts the
        # killed member (and with it its leadership) when its 6 s session expires, so this
        # rejoin is slow but assigned. A clean stop while the group was forming would have left
        # it without a leader for good (tests/app/infra/test_broker.py).
        first.start()  # the same RocksDB
        second = Worker(broker, tmp_path / "second", APP_ID, **WORKER_ENV).start()
        cluster.append(second)
        wait_until(lambda: owned(second) > 0, timeout_s=60)  # the group rebalanced
        # It took its partitions' state from `experiment-state`, not by folding from 0.
        assert re.search(
            r'^flagstream_attribution_restores_total\{outcome="restored"\} [1-9]',
            second.metrics(),
            re.MULTILINE,
        ), second.log_tail()
    finally:
        producer.join()
    pairs = [pair for *_, pair in records]
    want = Counter(
        (exposure.variant, int(exposure.timestamp // 60) * 60)
        for _, exposure in pairs
        if isinstance(exposure, Exposure)
    )
    wait_until(
        lambda: (
            equal_to_truth(broker, env, experiment, pairs)
            and series(broker, env, experiment) == want
        ),
        timeout_s=90,
        interval_s=0.5,
    )
