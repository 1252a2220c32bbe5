"""Workers rebuilt from the changelog hold the *last* change of every table, whatever the broker
says its end offsets are; two workers serve each other's writes."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.infra.broker import free_port, start_broker, stop
from app.infra.records import AppliedChange, ChangeOp, dumps
from app.infra.topics import Topics, partition_for
from tests.conftest import EventStream, Worker, flag, own_broker, produce, read_records, wait_until

PARTITIONS = 4
ENVS = ("alpha", "beta", "gamma", "delta", "epsilon")


# A broker per test: each test counts sequence numbers from an empty cluster.
broker = pytest.fixture(own_broker, name="broker")


# A write waits for its partition's decider. When a member stops uncleanly (the embedded
# broker can keep a stopping worker in the group until its session expires, 6 s, then
# rebalances), a write sent meanwhile waits longer than the default 10 s on a loaded CI machine:
# these tests check what the tables hold, not write latency, so their writes may wait a minute.
# Workers of other app ids (groups of their own) read the same topics: one prefix for all.
TOPICS = Topics.named("flagstream-recovery")
PATIENT = {
    "FLAGSTREAM_STREAM_DEPTH": "5",
    "FLAGSTREAM_WRITE_TIMEOUT_S": "60",
    "FLAGSTREAM_TOPIC_PREFIX": TOPICS.prefix,
}


def start(cluster: list[Worker], broker: str, data_dir: Path) -> Worker:
    worker = Worker(broker, data_dir, "flagstream-recovery", **PATIENT).start()
    cluster.append(worker)
    return worker


def table_state(worker: Worker) -> dict[str, object]:
    """What a client can see of every table: current flags, last history entry, stream tail."""
    admin = worker.admin()
    state: dict[str, object] = {}
    for env in ENVS:
        summary = admin.summary(env)
        state[f"{env}/flags"] = admin.flags(env)
        state[f"{env}/versions"] = {row["flag"]: row["version"] for row in summary}
        for row in summary:
            state[f"{env}/{row['flag']}/last-history"] = admin.history(env, row["flag"])[0]
        assert summary, f"{env}: no flags on a ready worker\n{worker.log_tail()}"
        seq = max(row["seq"] for row in summary)
        events = EventStream(
            f"{worker.url}/api/v1/environments/{env}/stream", last_event_id=seq - 1
        )
        try:
            state[f"{env}/stream-tail"] = events.next()
        finally:
            events.close()
    return state


def end_offset(broker: str, partition: int) -> int:
    async def run() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker)
        await consumer.start()
        try:
            tp = TopicPartition(TOPICS.flags_changelog, partition)
            return int((await consumer.end_offsets([tp]))[tp])
        finally:
            await consumer.stop()

    return asyncio.run(run())


def test_an_empty_worker_recovers_the_last_change_of_every_table(
    cluster: list[Worker], broker: str, tmp_path: Path
) -> None:
    first = start(cluster, broker, tmp_path / "first")
    admin = first.admin()
    for round_ in range(3):
        for env in ENVS:
            for key in ("a", "b", "c"):
                admin.put(
                    env,
                    key,
                    flag(default="on" if round_ % 2 else "off", metadata={"round": round_}),
                )
    admin.set_state("alpha", "a", "DISABLED")
    admin.delete("beta", "b")

    # A foreign writer appends the last changes of "gamma" as one multi-record batch: the
    # embedded broker then reports an end offset short of the tail, as Kafka never would.
    env = "gamma"
    partition = partition_for(env, PARTITIONS)
    seq = max(row["seq"] for row in admin.summary(env))
    version = admin.summary(env)[0]["version"]
    tail = [
        AppliedChange(
            str(uuid.uuid4()),
            env,
            "a",
            ChangeOp.PUT,
            seq + i,
            version + i,
            flag(metadata={"tail": i}),
            "batch-writer",
            time.time(),
            time.time(),
        )
        for i in range(1, 8)
    ]
    offsets = produce(
        broker,
        TOPICS.flags_changelog,
        [(env.encode(), dumps(c.to_json())) for c in tail],
        partition,
    )
    assert end_offset(broker, partition) < offsets[-1] + 1, (
        "the broker no longer reports short end offsets"
    )
    wait_until(lambda: admin.flags(env)["a"].get("metadata") == {"tail": 7})
    before = table_state(first)
    assert before["gamma/flags"]["a"]["metadata"] == {"tail": 7}  # type: ignore[index]

    first.stop()
    # A group of its own: an empty worker needs the changelog, not the group, and Tansu keeps
    # a group whose leader left while it was forming without a leader, so a newcomer to it is
    # never assigned (tests/app/infra/test_broker.py). Its new group replays the commands,
    # which must change nothing (as test_redelivered_and_resent_commands_make_no_second_version).
    fresh = Worker(broker, tmp_path / "fresh", "flagstream-recovery-fresh", **PATIENT).start()
    cluster.append(fresh)
    assert table_state(fresh) == before


def test_a_restarted_worker_resumes_from_its_data_dir_and_sees_changes_made_while_down(
    cluster: list[Worker], broker: str, tmp_path: Path
) -> None:
    one = start(cluster, broker, tmp_path / "one")
    two = start(cluster, broker, tmp_path / "two")
    for env in ENVS:
        one.admin().put(env, "x", flag())
    # `two` stays in the groups while `one` is away: the worker resuming from `one`'s data dir
    # (the same groups, so the same committed offsets) joins a group with a live leader. With
    # every member gone, Tansu could keep a leader that left mid-rebalance and never assign
    # the newcomer (tests/app/infra/test_broker.py).
    one.stop()
    for env in ENVS:
        two.admin().put(env, "x", flag(default="on"))
        two.admin().put(env, "y", flag())
    again = Worker(broker, tmp_path / "one", "flagstream-recovery", **PATIENT).start()
    cluster.append(again)
    state = table_state(again)
    assert "rebuilding the table" not in again.log_path.read_text(), again.log_tail()
    assert state == table_state(two)


def test_a_change_written_through_one_worker_is_served_by_the_other(
    cluster: list[Worker], broker: str, tmp_path: Path
) -> None:
    one = start(cluster, broker, tmp_path / "one")
    two = start(cluster, broker, tmp_path / "two")
    written = one.admin().put("alpha", "shared", flag(default="on"))
    reply = wait_until(lambda: (r := two.admin().flag("alpha", "shared")).status == 200 and r)
    assert reply.headers["ETag"] == f'"{written["version"]}"'
    assert reply.body == flag(default="on")
    # And the other way round, with a conditional write that must see the first one.
    two.admin().put("alpha", "shared", flag(), version=written["version"])
    wait_until(lambda: one.admin().flags("alpha")["shared"] == flag())


def test_a_stream_client_too_far_behind_gets_a_snapshot(
    cluster: list[Worker], broker: str, tmp_path: Path
) -> None:
    worker = start(cluster, broker, tmp_path / "w")
    for i in range(8):  # the worker keeps the last 5 changes (FLAGSTREAM_STREAM_DEPTH)
        worker.admin().put("epsilon", f"f{i}", flag())
    events = EventStream(f"{worker.url}/api/v1/environments/epsilon/stream", last_event_id=1)
    try:
        seq, kind, data = events.next()
        assert (seq, kind, len(data["flags"])) == (8, "snapshot", 8)
    finally:
        events.close()


def test_writes_while_workers_join_and_leave_get_one_gap_free_sequence(
    cluster: list[Worker], broker: str, tmp_path: Path
) -> None:
    """Changes flow while a second worker joins and then leaves: the deciding partition moves
    twice with commands in flight (its new owner is handed the commands since the last commit
    again), yet every acknowledged change has its own sequence number, none is lost and none
    is applied twice."""
    patient = PATIENT
    first = Worker(broker, tmp_path / "first", "flagstream-recovery", **patient).start()
    cluster.append(first)
    acked: list[tuple[str, int, int]] = []
    done = threading.Event()

    def write() -> None:
        admin = first.admin()
        i = 0
        while not done.is_set():
            reply = admin.put("alpha", f"f{i % 7}", flag(default="on" if i % 2 else "off"))
            acked.append((reply["flag"], reply["version"], reply["seq"]))
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        second = Worker(broker, tmp_path / "second", "flagstream-recovery", **patient).start()
        cluster.append(second)
        joined = len(acked)
        wait_until(lambda: len(acked) >= joined + 30, timeout_s=60)
        second.stop()
        left = len(acked)
        wait_until(lambda: len(acked) >= left + 30, timeout_s=60)
    finally:
        done.set()
        writer.join(timeout=120)
    seqs = sorted(seq for _, _, seq in acked)
    assert seqs == list(range(1, len(acked) + 1))
    versions = {row["flag"]: row["version"] for row in first.admin().summary("alpha")}
    assert versions == {key: sum(1 for f, _, _ in acked if f == key) for key in versions}
    # The workers keep the last 5 changes (FLAGSTREAM_STREAM_DEPTH): all of them replay.
    last = seqs[-1]
    events = EventStream(f"{first.url}/api/v1/environments/alpha/stream", last_event_id=last - 5)
    try:
        assert [events.next()[:2] for _ in range(5)] == [
            (s, "change") for s in range(last - 4, last + 1)
        ]
    finally:
        events.close()


def test_a_worker_whose_broker_lost_its_data_rebuilds_its_table(
    cluster: list[Worker], tmp_path: Path
) -> None:
    """The embedded broker keeps nothing across a restart: a worker that kept its RocksDB must
    notice, or it would serve flags that no longer exist and ignore new changes."""
    port = free_port()
    brokers = f"127.0.0.1:{port}"
    old_broker = start_broker("127.0.0.1", port)
    try:
        worker = start(cluster, brokers, tmp_path / "kept")
        for env in ENVS:
            worker.admin().put(env, "old", flag())
        worker.stop()
    finally:
        stop(old_broker)
    new_broker = start_broker("127.0.0.1", port)
    try:
        again = Worker(brokers, tmp_path / "kept", "flagstream-recovery").start()
        cluster.append(again)
        assert again.admin().flags("alpha") == {}
        assert again.admin().put("alpha", "new", flag())["seq"] == 1
        assert set(again.admin().flags("alpha")) == {"new"}
        again.stop()
    finally:
        stop(new_broker)
    assert "rebuilding the table" in again.log_path.read_text()


def test_redelivered_and_resent_commands_make_no_second_version(
    cluster: list[Worker], broker: str, tmp_path: Path
) -> None:
    """Every command is handed to the deciding agent again (a consumer group with no committed
    offsets, as after they expired), and every command is also sent again as a new record (a
    writer's retry): nothing is applied a second time, although the workers remember only the
    last 5 changes' ids."""
    first = start(cluster, broker, tmp_path / "first")
    for i in range(12):
        first.admin().put("alpha", f"f{i % 3}", flag(metadata={"i": i}))
    versions = {row["flag"]: row["version"] for row in first.admin().summary("alpha")}
    first.stop()
    commands = read_records(broker, TOPICS.flag_changes, PARTITIONS)
    assert len(commands) == 12
    produce(
        broker, TOPICS.flag_changes, [(r.key, r.value) for r in commands], commands[0].partition
    )

    again = Worker(broker, tmp_path / "again", "flagstream-replay", **PATIENT)
    cluster.append(again.start())
    # Commands of one environment are decided in order: this one is decided after all 24.
    assert again.admin().put("alpha", "after", flag())["seq"] == 13
    summary = again.admin().summary("alpha")
    assert {row["flag"]: row["version"] for row in summary if row["flag"] != "after"} == versions
