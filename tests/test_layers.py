"""The package's import graph: layers visible from the folder names, nothing importing upwards, no cycle.

Every import of a ``multitask_deeplab`` module (at module level, in functions, under ``TYPE_CHECKING``) is an
edge. A module may import modules of its own layer or of a lower one (``LAYERS``, lowest first); modules of one
layer must not import each other in a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "multitask_deeplab"

LAYERS = [
    ["errors", "registry", "plugins"],
    ["config"],
    ["runtime"],
    ["visualize"],
    ["metrics"],
    ["tasks"],
    ["losses"],
    ["models"],
    ["weighting"],
    ["data"],
    ["engine"],
    ["inference"],
    ["cli", "__main__"],
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports (``from a import b`` counts as ``a.b`` when that is a module)."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.startswith("multitask_deeplab."))
    return found


def layer_of(module: str) -> int:
    top = module.split(".")[1]
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"{module} is in no layer: add its folder to LAYERS in {__file__}")


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, modules) - {module_name(p)} for p in paths if module_name(p) != "multitask_deeplab"}


def test_every_module_is_in_a_layer():
    for module in import_graph():
        layer_of(module)


def test_nothing_imports_upwards():
    upwards = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if target != "multitask_deeplab" and layer_of(target) > layer_of(module)
    ]
    assert not upwards, "imports from a higher layer:\n" + "\n".join(upwards)


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, [*stack, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
