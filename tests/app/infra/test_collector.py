"""The worker's garbage collector passes over young objects less often, as configured."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from app.infra.collector import tune_collector
from app.infra.settings import Settings
from tests.conftest import REPO


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    """This process's thresholds, restored after the test."""
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)


def test_the_young_threshold_is_set_and_the_older_ratios_kept(
    thresholds: tuple[int, int, int],
) -> None:
    tune_collector(50_000)
    assert gc.get_threshold() == (50_000, thresholds[1], thresholds[2])


def test_zero_leaves_cpython_s_thresholds(thresholds: tuple[int, int, int]) -> None:
    tune_collector(0)
    assert gc.get_threshold() == thresholds


def test_a_negative_threshold_is_refused(thresholds: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match="FLAGSTREAM_GC_YOUNG_THRESHOLD"):
        tune_collector(-1)
    assert gc.get_threshold() == thresholds


def test_a_worker_process_runs_with_the_setting_s_threshold() -> None:
    """`run_in_process` applies the setting before the worker is built (seen failing with
    the call taken out: CPython's 700)."""
    probe = (
        "import gc, sys\n"
        "import app.main\n"
        "from app.cli import commands\n"
        "from app.infra.settings import Settings\n"
        "def stop_here(settings):\n"
        "    print(gc.get_threshold()[0]); sys.exit(0)\n"
        "app.main.build = stop_here\n"  # the worker is built after the collector is tuned
        "commands.run_in_process(Settings.from_env())\n"
    )
    env = {**os.environ, "FLAGSTREAM_GC_YOUNG_THRESHOLD": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert out.stdout.split()[-1:] == ["12345"], out.stderr[-2000:]
    assert Settings.from_env().gc_young_threshold == 50_000  # the default
