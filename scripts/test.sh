#!/usr/bin/env bash
# Installs Kairos with the train and dev extras into .venv (torch==2.13.0 CPU) and runs the test suite.
# Debian's chromium is installed when the user may (root, or CI) for the dashboard's browser test;
# without it that one test skips with its reason.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "chromium could not be installed; the dashboard browser test will skip" >&2
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
quiet_pip() {  # pip's config names local index folders that may be absent: drop those warnings, keep the rest
  .venv/bin/python -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}
quiet_pip --upgrade pip >/dev/null
quiet_pip -e '.[train,dev]'
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
