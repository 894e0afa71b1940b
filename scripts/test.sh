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
exec .venv/bin/python -m pytest -n "${DPBEAM_TEST_WORKERS:-2}" --dist worksteal -v --durations=15 "$@"
