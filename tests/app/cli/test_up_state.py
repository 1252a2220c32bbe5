"""`flagstream up` started twice on one data dir: the second run has the first run's flags
and history (restored into its fresh broker), the same admin token and SDK key, and loads the
examples only into an empty `development`."""

from __future__ import annotations

import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from app.cli.processes import consecutive_free_ports
from app.control.client import AdminClient
from app.control.restore import origin
from app.infra.broker import free_port
from tests.conftest import REPO, flag

BANNER_END = "Ctrl-C stops everything."


class Up:
    """One `flagstream up` process; its console read line by line as it comes."""

    def __init__(self, data_dir: Path, log: Path, *options: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGSTREAM_")}
        ports = {name: str(free_port()) for name in ("--port", "--kafka-port")}
        # Two processes serve metrics on two consecutive ports: a run outside the ephemeral
        # range, which a connection made before the worker binds it cannot hold.
        ports["--metrics-port"] = str(consecutive_free_ports("127.0.0.1", 2))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "up", "--data-dir", str(data_dir), "--log", str(log)]
            + [word for pair in ports.items() for word in pair]
            + [*options],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.console: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def banner(self, timeout_s: float = 120.0) -> dict[str, str]:
        """The URL, admin token and SDK key `up` printed once it was up."""
        deadline = time.monotonic() + timeout_s
        while not self.console or self.console[-1] != BANNER_END:
            try:
                self.console.append(self.lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError("no banner:\n" + "\n".join(self.console)) from None
        text = "\n".join(self.console)
        found = {
            name: re.search(pattern, text)
            for name, pattern in (
                ("url", r"flags: +(http://\S+?)/api/"),
                ("admin_token", r"admin token: (\S+)"),
                ("sdk_key", r"SDK key: +(\S+)"),
            )
        }
        assert all(found.values()), text
        return {name: match.group(1) for name, match in found.items() if match}

    def interrupt(self, timeout_s: float = 60.0) -> int:
        """Ctrl-C, and its exit code once broker and worker are stopped."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_up_keeps_flags_history_and_keys_across_a_restart(tmp_path: Path) -> None:
    data_dir, log = tmp_path / "up", tmp_path / "worker.log"
    # One process: this test reads what it wrote back at once, and two processes are two
    # replicas, each applying the changes in its own time.
    first = Up(data_dir, log, "--processes", "1")
    try:
        seen = first.banner()
        admin = AdminClient(seen["url"], seen["admin_token"])
        examples = admin.flags("development")
        assert examples, "the first run loads the examples"
        admin.put("development", "kept-across-restarts", flag(default="on"))
        admin.set_state("development", "kept-across-restarts", "DISABLED")
        before = (admin.flags("development"), admin.environments())
        history = admin.history("development", "kept-across-restarts")
        assert first.interrupt() == 0
    finally:
        first.kill()
    keys = data_dir / "keys.json"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600

    second = Up(data_dir, log, "--processes", "1")
    try:
        again = second.banner()
        assert (again["admin_token"], again["sdk_key"]) == (seen["admin_token"], seen["sdk_key"])
        admin = AdminClient(again["url"], again["admin_token"])
        # Restored, not reloaded: the examples are not applied on top of the restored flags.
        assert (admin.flags("development"), admin.environments()) == before
        restored = admin.history("development", "kept-across-restarts")
        assert [v["definition"] for v in restored] == [v["definition"] for v in history]
        markers = [origin(v["change_id"]) for v in restored]
        assert [m.change_id if m else None for m in markers] == [v["change_id"] for v in history]
        assert second.interrupt() == 0
    finally:
        second.kill()

    # The keys are printed on `up`'s console only, never in a log.
    logs = log.read_text() + (data_dir / "broker.log").read_text(errors="replace")
    assert seen["admin_token"] not in logs and seen["sdk_key"] not in logs
    assert "\n".join(second.console).count(seen["admin_token"]) == 3  # the banner's three


def test_up_keeps_a_changelog_key_and_gives_an_older_keys_file_one(tmp_path: Path) -> None:
    from app.cli.up_state import KEYS_FILE, load_keys
    from app.infra.changelog_signing import MIN_KEY_BYTES

    first = load_keys(tmp_path)
    assert len(first.changelog_key) >= MIN_KEY_BYTES
    assert load_keys(tmp_path) == first  # kept: the next run signs with the same key
    older = tmp_path / "older"
    older.mkdir()
    (older / KEYS_FILE).write_text('{"admin_token": "admin-x", "sdk_key": "sdk-y"}')
    upgraded = load_keys(older)
    assert (upgraded.admin_token, upgraded.sdk_key) == ("admin-x", "sdk-y")
    assert len(upgraded.changelog_key) >= MIN_KEY_BYTES
    assert stat.S_IMODE((older / KEYS_FILE).stat().st_mode) == 0o600
    assert load_keys(older) == upgraded
