"""The package's layers only point down: readers -> validation -> extraction -> sinks -> run -> command line.

Each module of `retail_bronze_source` belongs to one layer; it may import modules of its own layer or below, never
above. On top of the ladder, three rules a review drew: validation never imports a reader; the sinks import neither
the package face, validation nor extraction; the run imports no extraction or validation internals.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "retail_bronze_source"

LAYERS: dict[str, int] = {
    # 0: foundations every layer may use
    "reasons": 0, "settings": 0, "limits": 0, "helpers": 0, "redact": 0, "crash_points": 0, "workdirs": 0,
    "outputs": 0, "raw": 0, "parquet_files": 0, "run_lock": 0, "process": 0, "storage": 0, "lease": 0,
    # 1: readers
    "readers": 1,
    # 2: declarations (the registry validates reader options)
    "registry": 2, "audits": 2,
    # 3: validation
    "validate": 3, "nested": 3, "row_hash": 3, "audit": 3,
    # 4: extraction and the package face
    "discovery": 4, "ledger": 4, "stage": 4, "keys": 4, "extract": 4, "loaded": 4, "resources": 4, "__init__": 4,
    # 5: sinks
    "sinks": 5,
    # 6: the run and operations across sinks
    "run": 6, "promote": 6, "auditing": 6, "wap": 6, "observe": 6,
    # 7: the command line
    "cli": 7,
}
FORBIDDEN: dict[str, set[str]] = {
    "validate": {"readers"}, "nested": {"readers"}, "row_hash": {"readers"}, "audit": {"readers"},
    "sinks": {"__init__", "validate", "nested", "row_hash", "extract", "stage", "keys", "ledger", "resources",
              "discovery"},
    "run": {"extract", "stage", "keys", "ledger", "validate", "nested", "row_hash", "discovery", "readers"},
    "observe": {"run", "cli", "extract", "stage", "keys", "ledger", "validate", "nested", "row_hash", "discovery",
                "readers"},
}


def _group(module: str) -> str:
    """The layer key of a dotted module name inside the package (`sinks.delta` -> `sinks`)."""
    return module.split(".")[0] if module else "__init__"


def _is_module(dotted: list[str]) -> bool:
    path = PACKAGE.joinpath(*dotted)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """The nodes of a module outside `if TYPE_CHECKING:` blocks (annotations only, never imported at run time)."""
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
               for n in ast.walk(node)}
    return [node for node in ast.walk(tree) if id(node) not in skipped]


def _imports(path: Path) -> set[str]:
    """Package modules `path` imports (dotted, relative to the package; `__init__` for the package face)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    package = parts[:-1]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            target = [*package[:len(package) - node.level + 1], *(node.module.split(".") if node.module else [])]
            for alias in node.names:
                inner = [*target, alias.name]
                found.add(".".join(inner) if _is_module(inner) else ".".join(target) or "__init__")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("retail_bronze_source"):
            found.add(node.module.removeprefix("retail_bronze_source").lstrip(".") or "__init__")
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("retail_bronze_source").lstrip(".") or "__init__" for a in node.names
                         if a.name.startswith("retail_bronze_source"))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _own_group(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    return relative.parts[0] if len(relative.parts) > 1 else relative.name


def test_every_module_has_a_layer() -> None:
    assert sorted({_own_group(p) for p in MODULES} - set(LAYERS)) == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    own = _own_group(path)
    for imported in _imports(path):
        group = _group(imported)
        if group == "__init__" and own == "readers" and imported == "readers":
            continue
        assert group in LAYERS, imported
        assert LAYERS[group] <= LAYERS[own], f"{own} (layer {LAYERS[own]}) imports {imported} (layer {LAYERS[group]})"
        assert group not in FORBIDDEN.get(own, set()), f"{own} must not import {imported}"
