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
#
# Dry run on a CPU machine (argument parsing, imports, every code path of the check, tiny sizes):
#   DEVICE=cpu CLS_IMAGES=16 DET_IMAGES=8 NAIVE_IMAGES=4 bench/gpu_check.sh none /tmp/gpu-dry
# runs the same commands with --device cpu --runtimes torch --gpu-parts (decode_jpeg and the TensorRT step run on
# the CPU device, TensorRT reports "skipped" without its package).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${1:-.whl}
OUT_DIR=${2:-${OUT:-gpu-report}}
DEVICE=${DEVICE:-cuda}
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
EXTRA=()
[ "$DEVICE" = cuda ] || EXTRA=(--runtimes torch --gpu-parts)
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')"
  start=$(date +%s)
  timeout 200 "$PY" bench/score_bench.py --device "$DEVICE" --task classify --images "${CLS_IMAGES:-2000}" \
    --naive-images "${NAIVE_IMAGES:-300}" --json-out "$OUT_DIR/gpu-classify.json" "${EXTRA[@]}" || echo "classify: exit $?"
  timeout 240 "$PY" bench/score_bench.py --device "$DEVICE" --task detect --images "${DET_IMAGES:-2000}" \
    --naive-images "${NAIVE_IMAGES:-300}" --json-out "$OUT_DIR/gpu-detect.json" "${EXTRA[@]}" || echo "detect: exit $?"
  echo "gpu check took $(( $(date +%s) - start )) s"
} 2>&1 | tee "$OUT_DIR/gpu-check.log"
