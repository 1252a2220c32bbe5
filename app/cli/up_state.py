"""What `flagstream up` keeps in its data dir so that a restart loses nothing.

The embedded broker keeps nothing across a restart, but the worker's flag table does. Each
`up` therefore starts its worker on an empty table and restores the previous run's table
into the fresh broker (`app.control.restore`), and reuses the admin token and SDK key it made the
first time, so scripts and SDKs configured against it keep working.

    <data dir>/keys.json     the admin token, the SDK key and the changelog key (mode 0600, made
                             by the first `up`; a changelog key added to an older file)
    <data dir>/worker/       FLAGSTREAM_DATA_DIR of this run's worker (its tables in p<i>/ when
                             it runs several processes: each holds every flag, p0 is restored)
    <data dir>/previous/     the last run's worker dir, until its table is restored
    <data dir>/broker.log    the embedded broker's log

The previous table is moved aside before the worker starts: a worker meeting an empty broker
wipes its table (tables/replication.py), which would destroy the only copy. It is dropped only
after a restore that refused nothing; until then every `up` restores from it again (restore
is idempotent), and this run's worker dir, built from a restore that did not finish, is what
gets discarded.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import orjson

__all__ = ["Keys", "drop_previous", "hand_over", "load_keys", "table_dir", "worker_dir"]

KEYS_FILE = "keys.json"


@dataclass(frozen=True, slots=True)
class Keys:
    admin_token: str
    sdk_key: str
    # FLAGSTREAM_CHANGELOG_KEY of the worker: `up` signs its changelog like production does.
    changelog_key: str


def load_keys(data_dir: Path) -> Keys:
    """The keys of this data dir, made and saved (readable by the owner only) the first time;
    a file from before changelog signing gains a changelog key."""
    path = data_dir / KEYS_FILE
    if not path.exists():
        keys_json = {
            "admin_token": "admin-" + secrets.token_urlsafe(16),
            "sdk_key": "sdk-development-" + secrets.token_urlsafe(8),
        }
        _write_private(path, orjson.dumps(keys_json).decode())
    os.chmod(path, 0o600)  # a copied or hand-made file may have been readable by others
    data = orjson.loads(path.read_bytes())
    if not isinstance(data, dict) or not all(
        isinstance(data.get(name), str) and data[name] for name in ("admin_token", "sdk_key")
    ):
        raise ValueError(f"{path} must hold non-empty strings admin_token and sdk_key")
    if not isinstance(data.get("changelog_key"), str) or not data["changelog_key"]:
        data["changelog_key"] = secrets.token_urlsafe(32)  # 43 characters: over MIN_KEY_BYTES
        _write_private(path, orjson.dumps(data).decode())
    return Keys(data["admin_token"], data["sdk_key"], data["changelog_key"])


def _write_private(path: Path, text: str) -> None:
    """Write `text` to a new file that is never readable by others, not even for a moment."""
    temporary = path.with_suffix(".tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def worker_dir(data_dir: Path) -> Path:
    return data_dir / "worker"


def table_dir(worker: Path) -> Path | None:
    """Where the flag table of a worker dir is: the dir itself, or its first process's
    (`flagstream worker --processes N`, app/cli/processes.py); None if it holds no table."""
    for candidate in (worker, worker / "p0"):
        if (candidate / "flags" / "CURRENT").is_file():
            return candidate
    return None


def hand_over(data_dir: Path) -> Path | None:
    """Move the last run's worker dir aside for restore; the dir to restore from, if any."""
    previous = data_dir / "previous"
    shutil.rmtree(data_dir / "previous.done", ignore_errors=True)
    if previous.exists():
        # A restore from it did not finish: its table is still the truth, this one is partial.
        shutil.rmtree(worker_dir(data_dir), ignore_errors=True)
        return previous
    if table_dir(worker_dir(data_dir)) is not None:
        worker_dir(data_dir).rename(previous)
        return previous
    shutil.rmtree(worker_dir(data_dir), ignore_errors=True)
    return None


def drop_previous(previous: Path) -> None:
    """Forget the previous table once restored (renamed first: a half-deleted dir is never
    mistaken for a table to restore)."""
    done = previous.with_name("previous.done")
    previous.rename(done)
    shutil.rmtree(done, ignore_errors=True)
