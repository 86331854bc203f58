"""Imports flow one way: no module of poolwatch imports one that imports it back (the configuration
modules not even for types); only config.py reads the environment. Read from the source, no imports
run."""

from __future__ import annotations

import ast
from pathlib import Path

import poolwatch

PACKAGE = Path(poolwatch.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_only(tree: ast.Module) -> set[int]:
    """The ids of the import statements under ``if TYPE_CHECKING:``."""
    return {
        id(statement)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for statement in node.body
    }


def _graph(*, types: bool) -> dict[str, set[str]]:
    """Which poolwatch modules each module imports; ``types``: those under TYPE_CHECKING as well."""
    modules = {_module(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        tree = ast.parse(path.read_text())
        skipped = set() if types else _type_only(tree)
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        # The package itself is the public face (its __init__ re-exports); modules import submodules.
        graph[name] = {m for m in imported if m in modules and m not in {name, "poolwatch"}}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == 1:
                return [*path[path.index(imported) :], imported]
            if imported not in state and (found := visit(imported)):
                return found
        path.pop()
        state[module] = 2
        return []

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return []


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = _graph(types=False)
    assert graph["poolwatch.config"], "the graph was read"
    assert _cycle(graph) == []


CONFIGURATION = ("config", "config_errors", "config_file", "urls", "masking", "errors", "client_config")


def test_the_configuration_modules_import_no_circle_even_for_types() -> None:
    graph = _graph(types=True)
    names = {f"poolwatch.{name}" for name in CONFIGURATION} & graph.keys()
    assert "poolwatch.config" in names
    assert _cycle({name: graph[name] & names for name in names}) == []


def test_the_configuration_modules_depend_downwards() -> None:
    graph = _graph(types=True)
    assert graph["poolwatch.masking"] == set()
    assert "poolwatch.config" not in graph["poolwatch.urls"] | graph["poolwatch.config_errors"]


ENVIRONMENT = {"environ", "environb", "getenv", "getenvb"}


def _reads_the_environment(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
            used = {node.attr}
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            used = {alias.name for alias in node.names}
        else:
            continue
        if used & ENVIRONMENT:
            return True
    return False


def test_only_config_reads_the_environment() -> None:
    readers = sorted(_module(path) for path in PACKAGE.rglob("*.py") if _reads_the_environment(path))
    # The library does not load the daemon's settings: multiprocess export reads
    # prometheus_client's PROMETHEUS_MULTIPROC_DIR, and its own two settings next to it, in one function;
    # the collector only asks whether that variable is set, so multiprocess.py loads only then.
    assert readers == [
        "poolwatch.config",
        "poolwatch.instrument.collector",
        "poolwatch.instrument.multiprocess",
    ]
