#!/usr/bin/env bash
# The engine tests: prepare, export-sc and profile on a real Flink cluster and on Spark (tests/engines).
# Fetches the engines first (cached in .engines/; needs Java 17 and Maven), then runs only the tests
# marked `engines`, which the main suite (scripts/test.sh) leaves out. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
.venv/bin/python scripts/engines.py fetch
exec .venv/bin/python -m pytest -m engines tests/engines "$@"
