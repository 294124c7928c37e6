#!/usr/bin/env bash
# One command from a fresh clone to a ranked selection: install, generate a pool, train a tiny model,
# start a local Label Studio and push the selection into it. Extra arguments go to `curate demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export YOLO_OFFLINE=1
exec .venv/bin/curate demo "$@"
