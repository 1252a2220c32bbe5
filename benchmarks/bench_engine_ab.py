"""The engine at an older commit against the working tree, in one process (issue 9).

A shared machine makes two separate runs of bench_engine.py differ by more than a code
change does, so this puts both engines in one process: the older one is imported as a
renamed copy, the rounds alternate which goes first, and the best of 60 rounds counts.
Scenarios: bench_engine.py's three flags plus the ``fractional`` shorthand and a
``fractional`` with computed weights (the slow path).

    git archive <commit> app | tar -x -C /tmp/old
    python benchmarks/bench_engine_ab.py /tmp/old
"""

from __future__ import annotations

import importlib
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import bench_engine as bench

import app.engine as new

EXTRA_FLAGS: dict[str, dict[str, Any]] = {
    "shorthand": {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"fractional": [["on", 50], ["off", 50]]},
    },
    "dynamic": {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"fractional": [{"var": "email"}, ["on", {"var": "age"}], ["off", 50]]},
    },
}


def load_old(tree: Path) -> ModuleType:
    """The engine under ``tree/app/engine``, imported as ``engine_before``."""
    root = Path(tempfile.mkdtemp())
    shutil.copytree(tree / "app" / "engine", root / "engine_before")
    for path in (root / "engine_before").glob("*.py"):
        text = re.sub(r"\bapp\.engine\b", "engine_before", path.read_text(encoding="utf-8"))
        path.write_text(text, encoding="utf-8")
    sys.path.insert(0, str(root))
    return importlib.import_module("engine_before")


def runner(
    engine: ModuleType, definition: dict[str, Any], contexts: list[Any]
) -> Callable[[], None]:
    flag = engine.compile_flag("f", definition)
    assert isinstance(flag, engine.CompiledFlag), flag
    evaluate, now = engine.evaluate, bench.NOW

    def run() -> None:
        for context in contexts:
            evaluate(flag, context, now)

    return run


def main() -> None:
    old = load_old(Path(sys.argv[1]))
    contexts = bench.make_contexts()
    for name, definition in {**bench.FLAGS, **EXTRA_FLAGS}.items():
        same = [
            engine.evaluate(engine.compile_flag("f", definition), c, 0).variant
            for engine in (new, old)
            for c in contexts
        ]
        assert same[: len(contexts)] == same[len(contexts) :], f"{name}: answers differ"
        runs = {
            "after": runner(new, definition, contexts),
            "before": runner(old, definition, contexts),
        }
        best = dict.fromkeys(runs, float("inf"))
        for round_ in range(60):
            for label in sorted(runs, reverse=bool(round_ % 2)):
                started = time.perf_counter()
                runs[label]()
                best[label] = min(best[label], time.perf_counter() - started)
        rates = {label: len(contexts) / seconds for label, seconds in best.items()}
        print(
            f"| {name} | {rates['before']:,.0f} | {rates['after']:,.0f} "
            f"| {rates['after'] / rates['before']:.2f} |"
        )


if __name__ == "__main__":
    main()
