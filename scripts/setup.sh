#!/usr/bin/env bash
# Create/refresh .venv with everything fedmtkd needs (torch/torchvision pinned, no weights downloaded).
# Idempotent: re-installs only when pyproject.toml changed since the last successful setup.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.fedmtkd-setup
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing fedmtkd and its dependencies into .venv (torch==2.14.1, torchvision==0.29.1)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,export,simulation]" 2>&1 \
    | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import torch, torchvision, flwr, segmentation_models_pytorch, albumentations" 
  echo "$want" > "$stamp"
fi
