"""`flagstream restore` rebuilds a cluster that lost its data from a stopped worker's table:
the same flags, the kept history in its order, each version marked as restored, and nothing
applied twice however often it runs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.cli.commands import main
from app.control.restore import origin, plan, read_table
from app.infra.broker import free_port, start_broker, stop
from tests.conftest import ADMIN_TOKEN, Worker, flag

HISTORY_DEPTH = 3
ENVS = ("prod", "staging")
HOST = "127.0.0.1"


@dataclass
class Source:
    """A stopped worker's data dir and what its API showed before it stopped."""

    data_dir: Path
    flags: dict[str, dict[str, Any]]  # env -> the flagd file's flags
    history: dict[str, dict[str, list[dict[str, Any]]]]  # env -> flag -> versions, newest first
    seq: dict[str, int]


class Cluster:
    """The embedded broker on a fixed port, restartable: a restart is an empty cluster."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process = start_broker(HOST, self.port)

    @property
    def brokers(self) -> str:
        return f"{HOST}:{self.port}"

    def restart_empty(self) -> None:
        stop(self.process)
        self.process = start_broker(HOST, self.port)

    def stop(self) -> None:
        stop(self.process)


def write_history(admin: Any) -> None:
    """Flags and history in two environments, interleaved, with more versions than are kept,
    a disabled flag, a deleted one and one deleted then made again."""
    for round_ in range(5):
        admin.put(
            "prod", "banner", flag(default="on" if round_ % 2 else "off", metadata={"r": round_})
        )
        if round_ == 1:
            admin.put("prod", "checkout", flag(targeting={"if": [{"var": "beta"}, "on", "off"]}))
            admin.put("staging", "banner", flag(default="on"))
            admin.put("prod", "gone", flag())
        if round_ == 2:
            admin.set_state("prod", "checkout", "DISABLED")
            admin.delete("prod", "gone")
            admin.put("staging", "again", flag())
            admin.delete("staging", "again")
    admin.put("staging", "again", flag(default="on"))
    admin.put("staging", "off-from-start", flag(state="DISABLED"))


def snapshot(worker: Worker) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
    admin = worker.admin()
    flags = {env: admin.flags(env) for env in ENVS}
    seq = admin.environments()
    history = {}
    for env in ENVS:
        keys = {"banner", "checkout", "gone", "again", "off-from-start"}
        history[env] = {}
        for key in sorted(keys):
            reply = admin.request("GET", f"/api/v1/environments/{env}/flags/{key}/history")
            if reply.status == 200:
                history[env][key] = reply.body["versions"]
            else:  # never written in this environment; any other answer is a failure
                assert reply.status == 404, reply
    return flags, history, seq


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    started = Cluster()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def source(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Source:
    data_dir = tmp_path_factory.mktemp("source") / "data"
    worker = Worker(
        cluster.brokers, data_dir, "flagstream-restore", FLAGSTREAM_HISTORY_DEPTH=str(HISTORY_DEPTH)
    ).start()
    try:
        write_history(worker.admin())
        flags, history, seq = snapshot(worker)
    finally:
        worker.stop()
    assert flags["prod"]["checkout"]["state"] == "DISABLED"
    assert "gone" not in flags["prod"] and history["prod"]["gone"][0]["op"] == "delete"
    assert len(history["prod"]["banner"]) == HISTORY_DEPTH < 5
    # Every flag ever written has a history (deleted ones too), so no comparison with the
    # restored history is vacuous: it used to skip any answer but 200, a failing route too.
    assert {env: set(versions) for env, versions in history.items()} == {
        "prod": {"banner", "checkout", "gone"},
        "staging": {"banner", "again", "off-from-start"},
    }
    return Source(data_dir, flags, history, seq)


@pytest.fixture(scope="module")
def target(
    cluster: Cluster, source: Source, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    """A new worker on the same broker, restarted: nothing of the source is left in it.

    One per module (a worker takes 10-15 s to start on a loaded machine): the tests below run
    in order on it, prod restored first, staging after a crash, then a run into changes.
    """
    cluster.restart_empty()
    worker = Worker(
        cluster.brokers, tmp_path_factory.mktemp("target") / "data", "flagstream-restore"
    ).start()
    assert worker.admin().environments() == {}
    yield worker
    worker.stop()


def run_restore(source: Source, target: Worker, *more: str) -> int:
    argv = ["restore", "--from", str(source.data_dir), "--url", target.url, "--token", ADMIN_TOKEN]
    return main([*argv, *more])


def kept(versions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A source flag's kept versions, oldest first, without the deletes a restore starts with
    (nothing is there to delete)."""
    oldest_first = versions[::-1]
    while oldest_first and oldest_first[0]["op"] == "delete":
        oldest_first.pop(0)
    return oldest_first


def assert_restored(source: Source, target: Worker, env: str, *, env_order: bool) -> None:
    """The target's `env` holds the source's flags, and each flag's kept versions in order
    (in the environment's order too with `env_order`), each marked with what it restores."""
    flags, history, seq = snapshot(target)
    assert flags[env] == source.flags[env]
    assert history[env].keys() == source.history[env].keys()
    expected_order = []
    restored_order = []
    for key, versions in source.history[env].items():
        old = kept(versions)
        new = history[env][key][::-1]
        assert [v["definition"] for v in new] == [v["definition"] for v in old], key
        assert [v["version"] for v in new] == list(range(1, len(old) + 1))
        for before, after in zip(old, new, strict=True):
            assert after["actor"] == "restore:pytest"
            assert after["op"] == ("delete" if before["op"] == "delete" else "put")
            marker = origin(after["change_id"])
            assert marker is not None, after["change_id"]
            assert marker.version == before["version"]
            assert marker.change_id == before["change_id"]
            assert marker.updated_at == pytest.approx(before["updated_at"], abs=0.001)
            expected_order.append((before["seq"], key, before["version"]))
            restored_order.append((after["seq"], key, marker.version))
    if env_order:
        assert [v[1:] for v in sorted(restored_order)] == [v[1:] for v in sorted(expected_order)]
    assert sorted(v[0] for v in restored_order) == list(range(1, len(expected_order) + 1))
    assert seq[env] == len(expected_order)


def test_restore_gives_the_same_flags_and_history_in_order_marked_as_restored(
    source: Source, target: Worker, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_restore(source, target, "--env", "prod") == 0
    assert "0 refused" in capsys.readouterr().out
    assert_restored(source, target, "prod", env_order=False)  # several flags at once by default
    assert "staging" not in target.admin().environments()


def test_a_restore_after_a_crash_and_a_second_restore_apply_nothing_twice(
    source: Source, target: Worker, capsys: pytest.CaptureFixture[str]
) -> None:
    # A run that died halfway through staging (prod is done, by the test above).
    with read_table(source.data_dir) as table:
        steps = plan(table)
    admin = target.admin()
    done = len(steps["staging"]) // 2
    for step in steps["staging"][:done]:
        reply = admin.write(
            step.environment, step.flag, step.definition, change_id=step.change_id, actor=step.actor
        )
        assert reply.status == 200, reply

    assert run_restore(source, target, "--jobs", "1") == 0
    out = capsys.readouterr().out
    prod, staging = len(steps["prod"]), len(steps["staging"])
    assert f"prod: {prod} versions: 0 restored, {prod} already there" in out
    assert f"staging: {staging} versions: {staging - done} restored, {done} already there" in out
    assert_restored(source, target, "staging", env_order=True)
    after_one = snapshot(target)

    assert run_restore(source, target) == 0
    assert f"{prod + staging} versions: 0 restored, {prod + staging} already there" in (
        capsys.readouterr().out
    )
    assert snapshot(target) == after_one


def test_restore_refuses_a_running_workers_table_and_an_environment_with_changes_unless_forced(
    source: Source, target: Worker, capsys: pytest.CaptureFixture[str]
) -> None:
    # The target's own table is locked by its running worker: never read from under it.
    assert run_restore(Source(target.data_dir, {}, {}, {}), target) == 2
    assert "is in use: stop the worker" in capsys.readouterr().err

    # A change that is not the restore's own: the environment is no longer only restored.
    target.admin().put("prod", "someone-elses", flag())
    before = target.admin().environments()

    assert run_restore(source, target) == 2
    assert "environment(s) prod already have changes" in capsys.readouterr().err
    assert target.admin().environments() == before

    assert run_restore(source, target, "--force") == 0
    assert "0 restored" in capsys.readouterr().out
    assert target.admin().flags("prod") == {**source.flags["prod"], "someone-elses": flag()}
    assert target.admin().environments() == before


def test_restore_names_a_dir_without_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["restore", "--from", str(tmp_path), "--url", "http://127.0.0.1:9", "--token", "x"]
    assert main(argv) == 2
    assert f"no flag table in {tmp_path}" in capsys.readouterr().err
