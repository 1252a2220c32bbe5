"""The project's own imports, walked without importing anything: no cycle, one entry.

import-linter (`lint-imports`, pyproject.toml) states the layers; this walks every `import`
statement of app/, agents/ and tables/ itself, those inside functions too, which a lazy import
could otherwise hide from a layer check that only sees module-level edges.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("app", "agents", "tables")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imported(path: Path, name: str, known: dict[str, Path]) -> Iterator[str]:
    """The project modules `path` imports, resolved to the deepest module that exists."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                yield target


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(imported(path, name, known)) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_walk_sees_cycles_and_lazy_imports() -> None:
    """The checks below could not fail if the walk saw nothing: a cycle it must find."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    edges = graph()
    assert "app.main" in edges["app.cli.commands"]  # imported inside run_worker
    assert "app.engine" in edges["app.evaluation.evaluator"]


def test_no_import_cycle_among_the_project_modules() -> None:
    assert cycles(graph()) == []


def test_only_the_cli_imports_the_composition_root() -> None:
    importers = sorted(name for name, targets in graph().items() if "app.main" in targets)
    assert importers == ["app.cli.commands"]


def defined_names(tree: ast.Module) -> set[str]:
    """The names a module binds at its top level: definitions, assignments, imports."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).partition(".")[0] for a in node.names)
    return names


def public_names(tree: ast.Module) -> list[str] | None:
    """The module's `__all__` as written (a literal list of strings), None without one."""
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "__all__":
            value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
            assert isinstance(value, ast.List | ast.Tuple), "__all__ must be a literal list"
            return [ast.literal_eval(item) for item in value.elts]
    return None


def all_problems(source: str, is_package: bool) -> list[str]:
    """What is wrong with a module's `__all__`: missing, listing what it does not define or
    twice, or an empty one on a package that does not say in a docstring what it is."""
    tree = ast.parse(source)
    listed = public_names(tree)
    if listed is None:
        return ["no __all__"]
    defined = defined_names(tree)
    problems = [f"{name!r} listed but not defined" for name in listed if name not in defined]
    problems += [f"{name!r} listed twice" for name in set(listed) if listed.count(name) > 1]
    if is_package and not ast.get_docstring(tree):
        problems.append("a package's __init__ says in a docstring what the package is")
    return problems


def test_the_all_check_sees_what_is_wrong() -> None:
    """The check below could not fail if it accepted anything: modules it must refuse."""
    assert all_problems("def f(): pass", is_package=False) == ["no __all__"]
    assert all_problems("__all__ = ['f', 'g']\ndef f(): pass", False) == [
        "'g' listed but not defined"
    ]
    assert all_problems("__all__: list[str] = []", is_package=True) != []
    assert all_problems('"""Doc."""\n__all__: list[str] = []', is_package=True) == []
    good = "from x import y as z\nimport a.b\nA: int = 1\nclass C: pass\n"
    assert all_problems(good + "__all__ = ['A', 'C', 'a', 'z']", is_package=False) == []


def test_every_module_states_its_public_names() -> None:
    """`__all__` in every module of app/, agents/ and tables/, naming only what it defines."""
    found = {
        name: problems
        for name, path in modules().items()
        if (problems := all_problems(path.read_text(), path.name == "__init__.py"))
    }
    assert found == {}
