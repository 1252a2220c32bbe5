"""The changelog trusts only the decider: a worker with a changelog key applies only records
signed with it (or an old key) for the partition they are in; anything else written straight to
`flags-changelog` keeps its flag at its last good version and is counted."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from app.infra.changelog_signing import SIGNATURE_HEADER, ChangelogSigner
from app.infra.records import AppliedChange, ChangeOp, changelog_headers, dumps
from app.infra.settings import Settings
from app.infra.topics import partition_for
from tests.agents.test_bad_records import metric
from tests.app.evaluation.test_live_flags_invalid import write_straight as write_value_straight
from tests.conftest import Worker, flag, wait_until
from tests.worker_topics import topics_of

ENVIRONMENT = "development"  # the Worker's SDK key evaluates this environment
KEY = "changelog-key-one-" + "1" * 32
NEW_KEY = "changelog-key-two-" + "2" * 32
STRANGER_KEY = "changelog-key-three-" + "3" * 32


def signed_worker(broker: str, tmp_path: Path, name: str, app_id: str, **env: str) -> Worker:
    return Worker(broker, tmp_path / name, app_id, **env)


def change(key: str, seq: int, version: int, default: str) -> AppliedChange:
    now = time.time()
    return AppliedChange(
        str(uuid.uuid4()),
        ENVIRONMENT,
        key,
        ChangeOp.PUT,
        seq,
        version,
        flag(default),
        "x",
        now,
        now,
    )


def write_straight(
    worker: Worker, record: AppliedChange, partition: int, headers: list[tuple[str, bytes]]
) -> None:
    """Append `record` to the changelog's `partition`, as a foreign producer."""
    write_value_straight(worker, dumps(record.to_json()), headers, partition)


def signed_for(
    worker: Worker, record: AppliedChange, partition: int, key: str
) -> list[tuple[str, bytes]]:
    """The headers the decider holding `key` writes with `record` in `partition`."""
    return ChangelogSigner.of(key).headers(
        topics_of(worker).flags_changelog,
        partition,
        ENVIRONMENT.encode(),
        dumps(record.to_json()),
        changelog_headers(record),
    )


def refused(worker: Worker, result: str) -> float:
    return metric(worker.metrics(), "flagstream_changelog_records_total", result=result)


def version_of(worker: Worker, key: str) -> int | None:
    reply = worker.admin().flag(ENVIRONMENT, key)
    return int(reply.headers["ETag"].strip('"')) if reply.status == 200 else None


def default_of(worker: Worker, key: str) -> Any:
    return worker.admin().flag(ENVIRONMENT, key).body["defaultVariant"]


def test_records_not_signed_by_the_decider_for_their_partition_are_not_applied(
    broker: str, cluster: list[Worker], tmp_path: Path
) -> None:
    worker = signed_worker(
        broker, tmp_path, "w", "signing-" + uuid.uuid4().hex[:6], FLAGSTREAM_CHANGELOG_KEY=KEY
    )
    cluster.append(worker.start())
    assert metric(worker.metrics(), "flagstream_changelog_signed") == 1
    assert refused(worker, "unsigned") == refused(worker, "forged") == 0  # exported at 0
    admin = worker.admin()
    name = "signed-" + uuid.uuid4().hex[:8]
    admin.put(ENVIRONMENT, name, flag(default="off"))  # the decider signs it: served
    assert version_of(worker, name) == 1
    partitions = Settings.from_env().flag_change_partitions
    home = partition_for(ENVIRONMENT, partitions)
    seq = admin.environments()[ENVIRONMENT]

    # A valid version with the decider's meta header, but no signature: not applied.
    unsigned = change(name, seq + 1, 2, "on")
    write_straight(worker, unsigned, home, changelog_headers(unsigned))
    wait_until(lambda: refused(worker, "unsigned") == 1)

    # A signature that does not verify: a made-up MAC, then a key this worker does not hold.
    made_up = change(name, seq + 1, 2, "on")
    headers = signed_for(worker, made_up, home, KEY)
    signature = headers[-1][1]
    headers[-1] = (SIGNATURE_HEADER, signature[:-1] + bytes([signature[-1] ^ 1]))
    write_straight(worker, made_up, home, headers)
    stranger = change(name, seq + 1, 2, "on")
    write_straight(worker, stranger, home, signed_for(worker, stranger, home, STRANGER_KEY))

    # Signed with the right key, but for another partition than the one it is written to.
    elsewhere = (home + 1) % partitions
    moved = change(name, seq + 1, 2, "on")
    write_straight(worker, moved, elsewhere, signed_for(worker, moved, home, KEY))
    wait_until(lambda: refused(worker, "forged") == 3)
    assert version_of(worker, name) == 1
    assert default_of(worker, name) == "off"

    # The same record in the partition it was signed for is applied (the key is the check).
    write_straight(worker, moved, home, signed_for(worker, moved, home, KEY))
    wait_until(lambda: version_of(worker, name) == 2)
    # And the decider numbers on from the last applied change, not from the refused ones.
    assert admin.put(ENVIRONMENT, name, flag(default="off"))["version"] == 3
    assert refused(worker, "unsigned") == 1
    assert refused(worker, "forged") == 3


def test_a_worker_applies_only_what_its_keys_signed_and_old_keys_still_verify(
    broker: str, cluster: list[Worker], tmp_path: Path
) -> None:
    app_id = "rotation-" + uuid.uuid4().hex[:6]
    writer = signed_worker(broker, tmp_path, "writer", app_id, FLAGSTREAM_CHANGELOG_KEY=KEY)
    cluster.append(writer.start())
    name = "rotated-" + uuid.uuid4().hex[:8]
    writer.admin().put(ENVIRONMENT, name, flag(default="on"))
    writer.stop()

    # Another key, and not the old one: it rebuilds from the changelog and serves none of it.
    stranger = signed_worker(broker, tmp_path, "stranger", app_id, FLAGSTREAM_CHANGELOG_KEY=NEW_KEY)
    cluster.append(stranger.start())
    assert version_of(stranger, name) is None
    assert refused(stranger, "forged") >= 1
    stranger.stop()

    # The key rotated: the new key signs, the old one still verifies what it signed.
    rotated = signed_worker(
        broker,
        tmp_path,
        "rotated",
        app_id,
        FLAGSTREAM_CHANGELOG_KEY=NEW_KEY,
        FLAGSTREAM_CHANGELOG_OLD_KEYS=KEY,
    )
    cluster.append(rotated.start())
    assert version_of(rotated, name) == 1
    assert default_of(rotated, name) == "on"
    rotated.admin().put(ENVIRONMENT, name, flag(default="off"))
    assert version_of(rotated, name) == 2
    assert refused(rotated, "forged") == 0
