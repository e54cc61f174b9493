"""Dependencies point one way: no import cycle among the modules of workers/ and service/, and workers/ never
imports service/. The graph is read from the source with ast: every import counts, at module level or inside a
function (a lazy import is still a dependency). An import under `if TYPE_CHECKING:` never runs: it counts for the
direction of the layers, not for cycles (a module may name a type of one that imports it)."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("workers", "service")


def _modules() -> dict[str, Path]:
    """Every module of the packages by dotted name (a package is its __init__.py)."""
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules an import statement names (`from p import m` names module p.m when there is one)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
            base = ".".join(anchor + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    found = set()
    for name in names:
        parts = name.split(".")
        for n in range(len(parts), 0, -1):  # the module itself, or the nearest package that is one of ours
            candidate = ".".join(parts[:n])
            if candidate in known:
                found.add(candidate)
                break
    return found


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, *, with_typing: bool) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of a module, those under `if TYPE_CHECKING:` only `with_typing`."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif _is_type_checking(node) and not with_typing:
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return found


def import_graph(*, with_typing: bool = False) -> dict[str, set[str]]:
    """Module -> the project modules it imports (`with_typing`: imports under TYPE_CHECKING too)."""
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        edges = set()
        for node in _imports(tree, with_typing=with_typing):
            edges |= _targets(node, name, is_package, known)
        graph[name] = edges - {name}
    return graph


def test_the_graph_sees_the_imports_it_should():
    graph = import_graph()
    assert "workers.runner" in graph["workers.worker"]  # module level
    assert "workers.celery_app" in graph["workers.dispatch"]  # inside a method
    assert "workers.notify.delivery" in graph["workers.notify.sender"]  # `from p.m import x` inside a function
    assert "workers.notify" in graph["workers.runner"]  # `from workers import notify`: the package
    assert "service.main" in graph["service.cli"] and "workers.cli" in graph["service.cli"]
    assert "workers.dispatch" not in graph["service.services.jobs"]  # under TYPE_CHECKING: never runs
    assert "workers.dispatch" in import_graph(with_typing=True)["service.services.jobs"]


def test_there_is_no_import_cycle_among_workers_and_service_modules():
    try:
        TopologicalSorter(import_graph()).prepare()
    except CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from None


def test_workers_never_imports_service():
    wrong = {
        name: sorted(t for t in targets if t.split(".")[0] == "service")
        for name, targets in import_graph(with_typing=True).items()
        if name.split(".")[0] == "workers"
    }
    assert {name: targets for name, targets in wrong.items() if targets} == {}
