#!/usr/bin/env bash
# Mutation check: does the suite notice when the arithmetic is wrong?
#
# mutmut (PyPI) changes one thing at a time in a module (an operator, a constant, an argument) and runs
# that module's fast unit tests against each change ("mutant"); a mutant the tests still pass "survived".
# Prints, per module, the mutants killed out of the total, then the survivors (`mutmut show NAME` in the
# copy prints one). Runs in a temporary copy of the working tree, so the checkout is never touched.
#
#   bash scripts/mutation.sh                      # compression crops illumination config
#   bash scripts/mutation.sh compression crops    # some of them
#   MUTATION_JOBS=2 bash scripts/mutation.sh      # parallel mutants (default 1)
#   MUTATION_REPORT=DIR                           # where each module's survivors are written (/tmp/dpbeam-mutation)
#
# Not part of CI: it takes minutes per module (config.py: the longest). README "Tests" states the figures.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh >/dev/null
.venv/bin/python -m uv pip install --python .venv/bin/python --quiet "mutmut==3.8.1"

# The fast tests of each module, one pytest argument per line. For crops.py, its TensorFlow
# comparison (tf.image.crop_and_resize) would load TensorFlow in every forked mutant and take hours, so it is
# deselected here (they run in the suite).
declare -A TESTS=(
  [compression]="tests/test_illumination.py"
  [illumination]="tests/test_illumination.py"
  [crops]=$'tests/test_crops.py\n    -k\n    not tensorflow'
  [config]="tests/test_config.py"
)
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=(compression crops illumination config)
work=$(mktemp -d)
REPORT=${MUTATION_REPORT:-/tmp/dpbeam-mutation}
mkdir -p "$REPORT"
trap 'rm -rf "$work"' EXIT
repo=$(pwd)
summary=()
for module in "${modules[@]}"; do
  tests=${TESTS[$module]:-}
  [ -n "$tests" ] || { echo "no tests are named for dpcore/$module.py (edit TESTS in $0)"; exit 2; }
  copy="$work/$module"
  mkdir -p "$copy"
  git ls-files -z | xargs -0 cp -a --parents -t "$copy"  # the working tree's tracked files (links as links)
  cat > "$copy/setup.cfg" <<EOF
[mutmut]
source_paths = dpcore/$module.py
pytest_add_cli_args_test_selection = $tests
pytest_add_cli_args = -p no:cacheprovider -q
also_copy = tests/
    beam_pipelines/
    dpcore/
    scripts/
    configs/
    deploy/
    README.md
EOF
  echo "[mutation] dpcore/$module.py against $tests ..."
  started=$SECONDS
  (cd "$copy" && "$repo/.venv/bin/mutmut" run --max-children "${MUTATION_JOBS:-1}" >/dev/null 2>&1 || true)
  (cd "$copy" && "$repo/.venv/bin/mutmut" export-cicd-stats >/dev/null 2>&1)
  line=$("$repo/.venv/bin/python" - "$copy/mutants/mutmut-cicd-stats.json" "$module" "$((SECONDS - started))" <<'PY'
import json, sys
stats = json.load(open(sys.argv[1]))
total = stats["total"] - stats["skipped"]
share = stats["killed"] / total if total else 0.0
print(f"dpcore/{sys.argv[2]}.py: {stats['killed']} of {total} mutants killed ({share:.0%}), "
      f"{stats['survived']} survived, {stats['timeout']} timed out, {stats['no_tests']} untested; {sys.argv[3]} s")
PY
)
  echo "[mutation] $line"
  summary+=("$line")
  # Each survivor's change, kept after the copy is gone: the README's list of harmless survivors comes from it.
  report="$REPORT/$module.txt"
  : > "$report"
  for name in $(cd "$copy" && "$repo/.venv/bin/mutmut" results 2>/dev/null | grep -E "survived|no tests|timeout" \
                | cut -d: -f1); do
    { echo "== $name"; (cd "$copy" && "$repo/.venv/bin/mutmut" show "$name" 2>/dev/null | grep -E '^[-+] ') || true; } >> "$report"
  done
  echo "[mutation] survivors with their changes: $report"
done
echo
printf '%s\n' "${summary[@]}"
