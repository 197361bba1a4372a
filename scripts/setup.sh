#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv and install balr-sam into it.
#   bash scripts/setup.sh          runtime dependencies (requirements.txt)
#   bash scripts/setup.sh --test   plus the test dependencies (requirements-test.txt)
# Environment: BALR_SAM_VENV (another folder), BALR_SAM_REQUIREMENTS (another requirements file;
# scripts/setup_monailabel.sh sets both for the MONAI Label environment), PYTHON (the interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${BALR_SAM_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
REQ="${BALR_SAM_REQUIREMENTS:-requirements.txt}"
if [ "${1:-}" = "--test" ]; then REQ=requirements-test.txt; fi
"$VENV/bin/python" -m pip install --quiet -r "$REQ"
"$VENV/bin/python" -m pip install --quiet --no-deps -e .
echo "balr-sam installed in $VENV (activate with: source $VENV/bin/activate)"
