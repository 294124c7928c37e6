"""Importing ``strategies`` stays cheap: torch and faiss only inside the functions that need them, checked
statically and by importing the package in a fresh interpreter. (What it may import at all: ``test_layout.py``.)
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "strategies"
FORBIDDEN = ("curation", "store", "cli", "sqlalchemy", "alembic", "label_studio_sdk", "ultralytics")
HEAVY = ("torch", "faiss")  # allowed only inside the functions that need them


def _imports(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    found: list[tuple[str, ast.AST]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node))
    return found


def _imports_outside_functions(tree: ast.Module) -> list[tuple[str, ast.AST]]:
    """Imports that run when the module is imported (module level, class bodies, ``if``/``try`` blocks)."""
    found: list[tuple[str, ast.AST]] = []
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.extend(_imports(node))
        else:
            todo.extend(ast.iter_child_nodes(node))
    return found


def _top(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_heavy_libraries_are_imported_only_inside_functions(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    heavy = sorted({name for name, _ in _imports_outside_functions(tree) if _top(name) in HEAVY})
    assert not heavy, f"{path.name} imports {heavy} at module level"


def test_importing_strategies_loads_neither_torch_nor_faiss() -> None:
    code = (
        "import json, sys\n"
        "import strategies\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY + FORBIDDEN!r})))\n"
    )
    root = str(PACKAGE.parent)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin"},
    )
    assert json.loads(out.stdout) == []
