"""`flagstream up`: the secrets it hands its worker, read as the worker reads them (the
variable, or the file its `_FILE` names). The up-and-restart run is in test_up_state.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli.supervisor import SECRET_FILES, inherited_environment
from app.cli.up_state import Keys
from app.control.client import AdminClient
from app.infra.broker import free_port
from tests.app.cli.test_up_state import BANNER_END
from tests.conftest import REPO, wait_until

# What load_keys keeps in a data dir (test values, not secrets).
KEYS = Keys("data-dir-token", "sdk", "data-dir-changelog-key")


def secrets_of(env: dict[str, str]) -> dict[str, str | None]:
    names = ("FLAGSTREAM_ADMIN_TOKEN", "FLAGSTREAM_CHANGELOG_KEY", *SECRET_FILES)
    return {name: env.get(name) for name in names}


def test_up_gives_its_worker_the_data_dirs_keys_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("FLAGSTREAM_ADMIN_TOKEN", "FLAGSTREAM_CHANGELOG_KEY", *SECRET_FILES):
        monkeypatch.delenv(name, raising=False)
    assert secrets_of(inherited_environment(KEYS)) == {
        "FLAGSTREAM_ADMIN_TOKEN": "data-dir-token",
        "FLAGSTREAM_CHANGELOG_KEY": "data-dir-changelog-key",
        "FLAGSTREAM_ADMIN_TOKEN_FILE": None,
        "FLAGSTREAM_CHANGELOG_KEY_FILE": None,
    }


def test_up_reads_secrets_from_their_files_and_passes_on_the_values_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Passed on beside the values, a `_FILE` variable would make the worker refuse both."""
    for name, value in (("admin-token", "file-token\n"), ("changelog-key", "file-key\n")):
        (tmp_path / name).write_text(value)
    monkeypatch.delenv("FLAGSTREAM_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("FLAGSTREAM_CHANGELOG_KEY", raising=False)
    monkeypatch.setenv("FLAGSTREAM_ADMIN_TOKEN_FILE", str(tmp_path / "admin-token"))
    monkeypatch.setenv("FLAGSTREAM_CHANGELOG_KEY_FILE", str(tmp_path / "changelog-key"))
    assert secrets_of(inherited_environment(KEYS)) == {
        "FLAGSTREAM_ADMIN_TOKEN": "file-token",
        "FLAGSTREAM_CHANGELOG_KEY": "file-key",
        "FLAGSTREAM_ADMIN_TOKEN_FILE": None,
        "FLAGSTREAM_CHANGELOG_KEY_FILE": None,
    }


def test_up_with_an_admin_token_file_serves_with_that_token(tmp_path: Path) -> None:
    (tmp_path / "admin-token").write_text("token-from-a-file\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLAGSTREAM_")}
    console = tmp_path / "console.txt"
    ports = {name: str(free_port()) for name in ("--port", "--kafka-port", "--metrics-port")}
    with console.open("w") as out:
        up = subprocess.Popen(
            [
                *(sys.executable, "-m", "app.cli", "up", "--data-dir", str(tmp_path / "up")),
                *("--log", str(tmp_path / "worker.log")),
                *(word for pair in ports.items() for word in pair),
            ],
            cwd=REPO,
            env={**clean, "FLAGSTREAM_ADMIN_TOKEN_FILE": str(tmp_path / "admin-token")},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: BANNER_END in console.read_text() or up.poll() is not None, 180)
        text = console.read_text()
        assert BANNER_END in text, text + (tmp_path / "worker.log").read_text()
        assert "admin token: token-from-a-file" in text
        url = re.search(r"flags: +(http://\S+?)/api/", text)
        assert url, text
        assert AdminClient(url.group(1), "token-from-a-file").flags("development")
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
