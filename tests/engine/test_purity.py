"""The engine stays pure: no transport, metrics, clock or randomness (STYLE.md rule 1)."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "app" / "engine"
FORBIDDEN = {"faust", "aiohttp", "prometheus_client", "time", "random", "datetime", "asyncio"}


def _imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module.split(".")[0])
    return modules


def test_engine_imports_nothing_impure() -> None:
    offenders = {
        str(path.relative_to(ENGINE)): sorted(_imported_modules(path) & FORBIDDEN)
        for path in ENGINE.rglob("*.py")
    }
    assert {path: bad for path, bad in offenders.items() if bad} == {}
