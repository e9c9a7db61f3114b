"""The package's import structure, read from the source: kernels are leaves and no two
modules import each other, directly or around a loop (docs/architecture.md, Layers)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tinymaskrcnn"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every tinymaskrcnn module ``path`` imports, at any depth of the file."""
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tinymaskrcnn")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("tinymaskrcnn"):
                module = node.module
            else:
                continue
            # "from . import kernels" names a submodule; "from .boxes import x" a module.
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                found.add(candidate if _exists(candidate) else module)
    return found


def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_import_reader_sees_relative_and_absolute_imports():
    graph = _graph()
    assert "tinymaskrcnn.kernels" in graph["tinymaskrcnn.boxes"]
    assert "tinymaskrcnn.kernels.bilinear" in graph["tinymaskrcnn.kernels.numba_roi_ops"]
    assert "tinymaskrcnn.boxes" in graph["tinymaskrcnn.rpn"]


def test_kernels_import_nothing_outside_kernels_nor_another_backend():
    for module, imported in _graph().items():
        if not module.startswith("tinymaskrcnn.kernels"):
            continue
        backend = module.rsplit(".", 1)[-1].split("_")[0]
        for target in imported:
            assert target.startswith("tinymaskrcnn.kernels"), f"{module} imports {target}"
            other = target.rsplit(".", 1)[-1].split("_")[0]
            if backend in ("numba", "cuda") and other in ("numba", "cuda"):
                assert other == backend, f"{module} imports the other backend's {target}"


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, str] = {}

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycle = path[path.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
