"""The layering, checked statically (every import in every module, including imports inside functions) and at run
time (what light commands import).

- ``store`` and ``strategies`` never import ``curation`` (data flows cli → curation → store/strategies);
  ``strategies`` never imports ``store``;
- only ``store`` imports SQLAlchemy and Alembic; only ``curation.labelstudio`` imports the Label Studio SDK;
- dev tooling (``curation.devtools``: demo, synthetic data, the local Label Studio) is never imported by the
  library — only ``cli.py``'s demo command, the benchmarks and the tests use it;
- ``status``, ``models list`` and ``--help`` never import torch (nor does an idle ``loop`` turn: tests/test_loop.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.imports import heavy_imports

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("curation", "store", "strategies", "bench")


def _modules() -> dict[str, Path]:
    found = {"cli": REPO / "cli.py"}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports, anywhere in the file, with relative imports resolved."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                is_package = path.name == "__init__.py"
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


IMPORTS = {name: _imports(path, name) for name, path in _modules().items()}


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _offenders(importers: tuple[str, ...], imported: tuple[str, ...], *, outside: bool = False) -> list[str]:
    """``importer imports target`` for every module within ``importers`` (or, with ``outside``, every module not
    within them) that imports something within ``imported``."""
    return [
        f"{name} imports {target}"
        for name, imports in IMPORTS.items()
        if _within(name, importers) != outside
        for target in sorted(imports)
        if _within(target, imported)
    ]


def test_the_layout_is_found() -> None:
    """Guards the checks below against scanning nothing."""
    assert {"cli", "store", "strategies", "curation.jobs.score", "curation.labelstudio"} <= set(IMPORTS)
    assert "sqlalchemy" in " ".join(IMPORTS["store.db"])
    assert _offenders(("curation.jobs",), ("store",)) != []  # a positive control: the scan sees real imports


def test_store_and_strategies_never_import_curation() -> None:
    assert _offenders(("store", "strategies"), ("curation", "cli")) == []
    assert _offenders(("strategies",), ("store",)) == []


def test_only_store_speaks_sql() -> None:
    assert _offenders(("store",), ("sqlalchemy", "alembic", "psycopg"), outside=True) == []


def test_only_the_label_studio_package_imports_its_sdk() -> None:
    assert _offenders(("curation.labelstudio",), ("label_studio_sdk",), outside=True) == []


def test_dev_tooling_is_never_imported_by_the_library() -> None:
    assert _offenders(("curation.devtools", "cli", "bench"), ("curation.devtools",), outside=True) == []


@pytest.mark.heavy
@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["status", "--json"],
        ["models", "list", "--json"],
        ["models", "current"],
        ["select", "--help"],
        ["report", "--out", "r.html", "--json"],
        ["export", "--out", "exported", "--json"],
    ],
)
def test_light_commands_do_not_import_torch(args: list[str], tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'curate.db'}"
    full = args if "--help" in args else [*args, "--db", db]
    code, heavy, stdout, stderr = heavy_imports(full, tmp_path)
    # ``models current`` and ``export`` on an empty registry fail cleanly (exit 3); everything else succeeds
    fails = args == ["models", "current"] or args[0] == "export"
    assert code == (3 if fails else 0), stdout + stderr
    assert heavy == [], f"curate {' '.join(args)} imported {heavy}"


@pytest.mark.heavy
def test_serve_imports_no_torch_until_a_predict_needs_the_model(tmp_path: Path) -> None:
    """curate serve's app answers /health, /setup, /metrics and /versions without torch, the model or the SDK."""
    import json
    import subprocess
    import sys

    from tests.imports import HEAVY

    script = (
        "import json, sys\n"
        "from fastapi.testclient import TestClient\n"
        "from curation.config import load_settings\n"
        "from curation.serve.app import create_app\n"
        f"settings = load_settings(overrides={{'db': 'sqlite:///{tmp_path / 'serve.db'}'}}, environ={{}})\n"
        "app = create_app(settings)\n"
        "client = TestClient(app)\n"
        "codes = [client.get('/health').status_code, client.post('/setup', json={}).status_code,\n"
        "         client.get('/metrics').status_code, client.get('/versions').status_code]\n"
        "app.state.turns.stop()\n"
        f"print(json.dumps({{'codes': codes, 'heavy': sorted(m for m in {HEAVY!r} if m in sys.modules)}}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout.strip().splitlines()[-1])
    assert data["codes"] == [200, 503, 200, 200]  # /setup: the registry has no current model yet
    assert data["heavy"] == [], f"curate serve imported {data['heavy']}"
