"""The package's import graph: one-way layers and no cycles, imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "onebit"

#: The package's parts from the bottom up: a part imports only parts of lower layers (and its own
#: modules). deploy sits right above nn, so a packed model needs nothing of training.
LAYERS = (
    {"_cpu", "_shape", "quantizers", "recipes", "optim"},
    {"nn", "reinforce", "schedules"},
    {"deploy", "_summary", "inspect", "models", "data"},
    {"training", "predict"},
    {"experiments"},
    {"cli"},
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at module level or inside functions."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                # `from . import x` imports the module x when there is one, else a name of the package
                imported |= {f"{module}.{a.name}" if f"{module}.{a.name}" in paths else module for a in node.names}
        graph[name] = {m for m in imported if m in paths and m != name}
    return graph


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def _layer(part: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if part in layer)


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(m) for m in _import_graph()} - {""}
    assert parts == set().union(*LAYERS)


def test_imports_go_down_the_layers():
    upward = sorted(f"{module} imports {target}" for module, targets in _import_graph().items() if _part(module)
                    for target in targets if _part(target) != _part(module)
                    and (not _part(target) or _layer(_part(target)) >= _layer(_part(module))))
    assert upward == []


def test_deploy_imports_only_nn_quantizers_and_itself():
    outside = {target for module, targets in _import_graph().items() if _part(module) == "deploy"
               for target in targets if _part(target) not in {"deploy", "nn", "quantizers", "_cpu"}}
    assert outside == set()


def test_there_are_no_import_cycles():
    graph = _import_graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                pytest.fail("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
