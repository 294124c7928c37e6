#!/usr/bin/env bash
# The whole GPU check in one short run (under 8 minutes on an H100/H200), with no network: installs the carried wheels
# (bench/gpu_wheels.sh prepares them) with pip --no-index, then runs bench/score_bench.py --device cuda for
# classification and detection (torch fp16 and fp32, TensorRT where the tensorrt package is present, GPU JPEG decode)
# and writes one JSON report per task plus the log into OUT_DIR.
#
#   bench/gpu_check.sh [WHEEL_DIR=.whl] [OUT_DIR=${OUT:-gpu-report}]
#
# Sizes: 2,000 images per task (the naive loop sees 300 of them): enough for stable GPU rates, small enough for the
# time limit. Override with CLS_IMAGES / DET_IMAGES / NAIVE_IMAGES.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${1:-.whl}
OUT_DIR=${2:-${OUT:-gpu-report}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/curate-site \
    "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/curate-site:$PWD
else
  echo "no wheels in $WHEELS: using what $PY already has" >&2
  export PYTHONPATH=$PWD
fi
export YOLO_OFFLINE=1 YOLO_VERBOSE=False PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name(0))"
  start=$(date +%s)
  timeout 200 "$PY" bench/score_bench.py --device cuda --task classify --images "${CLS_IMAGES:-2000}" \
    --naive-images "${NAIVE_IMAGES:-300}" --json-out "$OUT_DIR/gpu-classify.json" || echo "classify: exit $?"
  timeout 240 "$PY" bench/score_bench.py --device cuda --task detect --images "${DET_IMAGES:-2000}" \
    --naive-images "${NAIVE_IMAGES:-300}" --json-out "$OUT_DIR/gpu-detect.json" || echo "detect: exit $?"
  echo "gpu check took $(( $(date +%s) - start )) s"
} 2>&1 | tee "$OUT_DIR/gpu-check.log"
