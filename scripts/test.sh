#!/usr/bin/env bash
# Installs Kairos with the train and dev extras into .venv (torch==2.13.0 CPU) and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[train,dev]'
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
