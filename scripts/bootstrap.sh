#!/usr/bin/env bash
# Create (or reuse) .venv with everything the package, its training and its tests need.
# Idempotent: re-running only installs what changed in requirements.txt / setup.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.bootstrap-stamp
want=$(cat requirements.txt setup.py setup.cfg | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[bootstrap] installing dependencies into .venv (first run: ~2 min, ~1.5 GB)"
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned, so nothing later can pull a CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
echo "[bootstrap] done"
