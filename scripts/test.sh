#!/usr/bin/env bash
# The test command (CI and the README): sets up .venv if needed, then runs the WHOLE pytest suite
# (unit tests plus the end-to-end CPU paths and the real-Flower topology tests marked `slow`).
# Extra args go to pytest; the fast development loop skips the slow ones:
#   bash scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest tests "$@"
