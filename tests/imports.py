"""What a ``curate`` command imports, run in a fresh interpreter: the check behind "light commands stay light"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "ultralytics", "faiss", "torchvision", "label_studio_sdk", "ray")


def heavy_imports(args: list[str], cwd: Path) -> tuple[int, list[str], str, str]:
    """Run ``curate ARGS`` in a fresh interpreter (environment inherited); return its exit code, the heavy modules
    it imported, its stdout and its stderr."""
    script = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "import cli\n"
        f"result = CliRunner().invoke(cli.app, {args!r})\n"
        f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "print(json.dumps({'code': result.exit_code, 'heavy': heavy, 'stdout': result.stdout,\n"
        "                  'stderr': result.stderr}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return data["code"], data["heavy"], data["stdout"], data["stderr"]
