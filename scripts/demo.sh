#!/usr/bin/env bash
# Set up .venv, write the example project to ./demo-project and run every
# available command on it with the local DirectRunner.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
ROOT=${1:-demo-project}
DPBEAM=".venv/bin/dpbeam --root $ROOT --config bbbc022.json"
set -x
.venv/bin/dpbeam --root "$ROOT" example
$DPBEAM setup
$DPBEAM validate
$DPBEAM prepare --direct_num_workers 2 --direct_running_mode multi_threading
$DPBEAM export-sc
$DPBEAM train --seed 1
$DPBEAM profile
