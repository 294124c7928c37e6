#!/usr/bin/env bash
# Prepare the wheel folder that bench/gpu_check.sh installs from, on a machine whose pip reaches the package
# registry (the GPU machine has none). The GPU machine's Python image already holds torch, torchvision, numpy, pillow,
# opencv, pyyaml, psutil, rich, typer, filelock and matplotlib; this fetches what curate's scoring path and the
# benchmark import beyond those, pinned to the versions this checkout's .venv runs, as Python 3.12 x86-64 wheels
# (pure-Python ones, plus the small compiled ones: pydantic-core, SQLAlchemy, simplejpeg; onnx and ml_dtypes for the
# TensorRT export). About 30 MB.
#
#   bench/gpu_wheels.sh .whl            # then: bench/gpu_check.sh .whl OUT_DIR
#
# Override the target interpreter with PYTHON_VERSION=3.11 (the GPU image's python3 is 3.12).
set -euo pipefail
DIR=${1:-.whl}
PYV=${PYTHON_VERSION:-3.12}
VENV_PY=${VENV_PY:-.venv/bin/python}
[ -x "$VENV_PY" ] || VENV_PY=python3
PKGS=(ultralytics ultralytics-thop pydantic pydantic_core pydantic-settings python-dotenv typing-inspection simplejpeg
      annotated-types typing_extensions SQLAlchemy alembic Mako
      onnx protobuf ml_dtypes)  # onnx: Ultralytics' TensorRT export goes through ONNX (used only where tensorrt is)
SPECS=()
for pkg in "${PKGS[@]}"; do
  version=$("$VENV_PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$pkg" 2>/dev/null || true)
  SPECS+=("${pkg}${version:+==$version}")
done
mkdir -p "$DIR"
platforms=()
for n in 39 35 34 31 28 27 24 17; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
"$VENV_PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  "${platforms[@]}" --platform manylinux2014_x86_64 --platform any -d "$DIR" "${SPECS[@]}"
ls -la "$DIR"
