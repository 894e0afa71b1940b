#!/usr/bin/env bash
# Set up .venv and run the main test suite. Extra arguments go to pytest.
#
# Three test processes (pytest-xdist; DPBEAM_TEST_WORKERS changes it, 0 runs in this process): many tests
# wait on process start-ups, TensorFlow imports, model tracing and pipeline set-up, so even on two cores a
# third process helps (2026-12-01, 2 cores: 14 min with two, 12 with three; 2026-12-02: four took 12 min
# 50 s against three's 12 min 16 s, more processes only add contention). Each process holds TensorFlow
# (1-2 GB). Tests go to whichever process is free, in collection order, longest first (tests/conftest.py;
# --dist loadgroup keeps a module that starts a server together; --no-loadscope-reorder keeps the order):
# with a third of the suite given to each process up front (worksteal), a minute-long test could start
# when the others had run out of work. Each test prints a line when it ends (-v), so a long one shows where
# the suite is.
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
exec .venv/bin/python -m pytest -n "${DPBEAM_TEST_WORKERS:-3}" --dist loadgroup --no-loadscope-reorder -v --durations=15 "$@"
