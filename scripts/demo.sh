#!/usr/bin/env bash
# Set up .venv, write the example project to ./demo-project (or $1) and run every
# command on it with the local DirectRunner.
#
# The demo trains ONE epoch, not the example config's three, so that it ends in about two and a half minutes on a
# 2-core laptop: it uses demo.json, which is bbbc022.json with train.model.epochs 1 and
# profile.checkpoint checkpoint_0001.hdf5. Everything else (EfficientNet-B0, 128-pixel boxes, all 808 cells)
# is the example's. Run `dpbeam --root demo-project --config bbbc022.json train` for the full three epochs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
ROOT=${1:-demo-project}
started=$SECONDS
.venv/bin/dpbeam --root "$ROOT" example
.venv/bin/python - "$ROOT" <<'PY'
import json
import pathlib
import sys

config = pathlib.Path(sys.argv[1]) / "inputs" / "config"
data = json.loads((config / "bbbc022.json").read_text())
data["train"]["model"]["epochs"] = 1
data["profile"]["checkpoint"] = "checkpoint_0001.hdf5"
(config / "demo.json").write_text(json.dumps(data, indent=2) + "\n")
print(f"wrote {config / 'demo.json'}: bbbc022.json with one training epoch (the demo's only change)")
PY
DPBEAM=".venv/bin/dpbeam --root $ROOT --config demo.json"
set -x
$DPBEAM setup
$DPBEAM validate
$DPBEAM prepare --direct_num_workers 2 --direct_running_mode multi_threading
$DPBEAM export-sc
$DPBEAM train --seed 1
$DPBEAM profile
$DPBEAM aggregate
$DPBEAM evaluate
$DPBEAM report
{ set +x; } 2>/dev/null
echo "demo finished in $((SECONDS - started)) s; outputs under $ROOT/outputs (see README, Quick start)"
