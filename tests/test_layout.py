"""Test files mirror the modules they test (STYLE.md, guideline 10).

`tests/<package path>/test_<module>.py` tests `<package path>/<module>.py`, so a newcomer finds
a module's tests from its path and a module's path from its tests. A module whose tests are
split by aspect may have several files, `test_<module>_<aspect>.py` (test_ofrep_fast_path.py
tests app/web/ofrep.py's fast path). A test named for a behaviour that spans modules is listed
in `BEHAVIOURS` with the reason it cannot sit beside one module.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"

# Test folders that mirror a source folder other than their own path under the repository:
# the engine and web suites predate app/'s packages and were not moved into tests/app/.
SOURCE_OF = {"tests/engine": "app/engine", "tests/web": "app/web"}

# Behaviour-named test files (or folders, ending in /), each with why it has no one module.
BEHAVIOURS = {
    "tests/test_layout.py": "the layout of tests/ itself",
    "tests/test_imports.py": "the imports of every module: layers, no cycle, one entry",
    "tests/test_deploy.py": "the deployment files: lock, Dockerfile, compose, .env.example",
    "tests/faults/": "a worker killed, or joining and leaving, under load: the whole system",
    "tests/experiments/": "a simulated experiment against its offline truth: fold, pipeline",
    "tests/agents/test_bad_records.py": "bad records on every topic that either agent reads",
    "tests/tables/test_broker_loss.py": "broker gone and back: table, broker watch, writer, web",
    "tests/tables/test_recovery.py": "tables rebuilt from the changelog, with the agent deciding",
    "tests/engine/test_conformance.py": "the flagd-testbed scenarios, against the whole engine",
    "tests/engine/test_differential.py": "the engine against the flagd-core oracle",
    "tests/engine/test_properties.py": "hypothesis properties of compile and evaluate together",
    "tests/engine/test_purity.py": "what no engine module may import",
    "tests/engine/test_edges.py": "slow paths, bounds and odd values across engine modules",
    "tests/web/test_bad_input.py": "bad input on every HTTP route",
    "tests/web/test_evaluation_budget.py": "a costly flag cannot stall a worker (engine budget)",
    "tests/web/test_idempotency.py": "Idempotency-Key through admin API, writer and agent",
    "tests/web/test_metrics_port.py": "where metrics listen: settings, metrics site, ops",
    "tests/web/test_openapi.py": "docs/openapi.yaml is the whole HTTP API of a worker",
    "tests/web/test_request_bodies.py": "every endpoint reads whole bodies up to the limit",
    "tests/web/test_secrets_in_bad_requests.py": "no secret in parser errors, any route",
    "tests/web/test_security.py": "who may do what, and where secrets never go, every route",
}


def relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def collected_test_files() -> list[Path]:
    """Every test module under tests/ (not the JavaScript client's node_modules)."""
    return sorted(p for p in TESTS.rglob("test_*.py") if "node_modules" not in p.parts)


def source_folder(test_folder: Path) -> Path:
    """The folder `test_folder` mirrors: the same path without `tests/`, or `SOURCE_OF`."""
    folder = relative(test_folder)
    if folder in SOURCE_OF:
        return REPO / SOURCE_OF[folder]
    return REPO / folder.removeprefix("tests").lstrip("/")


def mirrors_a_module(test_file: Path) -> bool:
    """Whether `test_<name>.py` has `<name>.py`, or `<module>.py` for `<module>_<aspect>`."""
    name = test_file.stem.removeprefix("test_")
    modules = {p.stem for p in source_folder(test_file.parent).glob("*.py")} - {"__init__"}
    return any(name == module or name.startswith(module + "_") for module in modules)


def is_behaviour(test_file: Path) -> bool:
    path = relative(test_file)
    return path in BEHAVIOURS or any(
        entry.endswith("/") and path.startswith(entry) for entry in BEHAVIOURS
    )


def test_every_test_file_mirrors_a_module_or_names_a_listed_behaviour() -> None:
    stray = [
        relative(path)
        for path in collected_test_files()
        if not mirrors_a_module(path) and not is_behaviour(path)
    ]
    assert not stray, (
        f"{stray}: move each to tests/<package path>/test_<module>.py of the module it tests, "
        "or, if it tests a behaviour spanning modules, add it to BEHAVIOURS with why"
    )


def test_every_listed_behaviour_exists_and_needs_listing() -> None:
    """The list stays short and true: no entry for a file that is gone or mirrors a module."""
    files = collected_test_files()
    stale = [
        entry
        for entry in BEHAVIOURS
        if not any(relative(p) == entry or relative(p).startswith(entry) for p in files)
    ]
    needless = [
        entry for entry in BEHAVIOURS if not entry.endswith("/") and mirrors_a_module(REPO / entry)
    ]
    assert (stale, needless) == ([], [])


def test_every_test_folder_is_a_package() -> None:
    """Test modules share names across folders (two test_evaluate.py): each folder needs an
    `__init__.py`, or pytest imports the second under the first one's name."""
    folders = {path.parent for path in collected_test_files()}
    assert not [relative(f) for f in folders if not (f / "__init__.py").exists()]
