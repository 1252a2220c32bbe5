"""`flagstream flags` (and `restore`, through the same `admin_token`): the admin token read as
the worker reads it, so a Docker or Kubernetes secret file works for the CLI too."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ADMIN_TOKEN, Worker, flag
from tests.conftest import run_flagstream as flagstream


def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin-token"
    path.write_text(ADMIN_TOKEN + "\n")  # a secret file ends with a newline
    return path


def test_flags_list_reads_the_admin_token_from_its_file(
    worker: Worker, env: str, tmp_path: Path
) -> None:
    worker.admin().put(env, "from-a-token-file", flag("on"))
    listed = flagstream(
        *("flags", "list", "--env", env, "--url", worker.url),
        FLAGSTREAM_ADMIN_TOKEN_FILE=str(token_file(tmp_path)),
    )
    assert listed.returncode == 0, listed.stderr
    assert "from-a-token-file" in listed.stdout


def test_a_token_and_its_file_both_set_is_a_clear_error(
    worker: Worker, env: str, tmp_path: Path
) -> None:
    listed = flagstream(
        *("flags", "list", "--env", env, "--url", worker.url),
        FLAGSTREAM_ADMIN_TOKEN=ADMIN_TOKEN,
        FLAGSTREAM_ADMIN_TOKEN_FILE=str(token_file(tmp_path)),
    )
    assert (listed.returncode, listed.stdout) == (2, "")
    assert listed.stderr == (
        "flagstream: set FLAGSTREAM_ADMIN_TOKEN or FLAGSTREAM_ADMIN_TOKEN_FILE, not both\n"
    )


def test_restore_reads_the_admin_token_as_the_worker_does(worker: Worker, tmp_path: Path) -> None:
    """The token is read before the data dir: both variables set stop it first."""
    restored = flagstream(
        *("restore", "--from", str(tmp_path / "no-table"), "--url", worker.url),
        FLAGSTREAM_ADMIN_TOKEN=ADMIN_TOKEN,
        FLAGSTREAM_ADMIN_TOKEN_FILE=str(token_file(tmp_path)),
    )
    assert restored.returncode == 2
    assert "not both" in restored.stderr and ADMIN_TOKEN not in restored.stderr
