#!/usr/bin/env bash
# The test command: sets up .venv if needed, then runs the whole pytest suite
# (unit tests plus the end-to-end CPU paths). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest tests "$@"
