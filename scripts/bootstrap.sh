#!/usr/bin/env bash
# Create ./.venv with everything dpbeam needs, pinned by constraints.txt.
# Needs only python3 (3.11+) with venv and pip. Installs uv (a fast pip) inside
# .venv first, because a plain pip install of this stack takes minutes.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -m uv --version >/dev/null 2>&1; then
  echo "[bootstrap] installing uv into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check uv \
    || echo "[bootstrap] uv unavailable: falling back to pip (slower)"
fi
started=$SECONDS
echo "[bootstrap] installing dpbeam and its dependencies into .venv (pinned by constraints.txt;" \
     "about a minute the first time, seconds afterwards)"
if .venv/bin/python -m uv --version >/dev/null 2>&1; then
  # uv reports what it resolved and installed (a progress bar on a terminal).
  .venv/bin/python -m uv pip install --python .venv/bin/python --compile-bytecode \
    --constraint constraints.txt --editable ".[test,gcp]"
else
  .venv/bin/python -m pip install --progress-bar on --disable-pip-version-check \
    --constraint constraints.txt --editable ".[test,gcp]"
fi
echo "[bootstrap] .venv ready in $((SECONDS - started)) s"
