#!/usr/bin/env bash
# Create ./.venv and install curate into it (editable), with the test tools when called with "dev".
# Idempotent: a second run only checks that everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${CURATE_VENV:-.venv}"
extras="${1:-}"

"$PYTHON" - <<'PY' || { echo "curate needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 2; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

if [ ! -x "$VENV/bin/python" ]; then
  echo "Creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi

if [ "$extras" = "dev" ]; then
  spec=".[dev]"
  stamp="$VENV/.curate-installed-dev"
else
  spec="."
  stamp="$VENV/.curate-installed"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "Installing curate ($spec) into $VENV — the first time this downloads torch (~2 min, ~6 GB)" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec" 2>&1 \
    | grep -v "^WARNING: Location 'file:" >&2 || true
  "$VENV/bin/python" -c "import curation, cli" 2>/dev/null || { echo "installing curate failed" >&2; exit 1; }
  touch "$stamp"
fi

# Ultralytics cannot run without a torchvision whose compiled ops match torch (see README, "Installing").
if ! "$VENV/bin/python" -c "import torch, torchvision; torchvision.ops.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)" 2>/dev/null; then
  echo "torch and torchvision in $VENV do not match (e.g. a CPU-only torch wheel with a CUDA torchvision)." >&2
  echo "Fix: $VENV/bin/pip install --force-reinstall torch torchvision  (see README, Installing)" >&2
  exit 1
fi
