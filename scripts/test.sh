#!/usr/bin/env bash
# Set up .venv and run the main test suite. Extra arguments go to pytest.
#
# Two test processes (pytest-xdist; DPBEAM_TEST_WORKERS changes it, 0 runs in this process): most tests
# wait on process start-ups, TensorFlow imports and pipeline set-up, so two processes on two cores take the
# suite from ~15 to ~10 minutes. Not more by default: each process holds TensorFlow (1-2 GB). Each test
# prints a line when it ends (-v), so a long one shows where the suite is.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
# The report's test opens the page in a real headless browser: Debian's chromium (a system package).
if ! command -v chromium >/dev/null 2>&1; then
  echo "[test] installing Debian's chromium for the report's browser test"
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo "sudo")
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q chromium >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null; } \
    || echo "[test] could not install chromium: tests/test_report.py will fail (it never skips)"
fi
exec .venv/bin/python -m pytest -n "${DPBEAM_TEST_WORKERS:-2}" --dist worksteal -v --durations=15 "$@"
