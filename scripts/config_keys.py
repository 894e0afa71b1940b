"""Does every config key matter? For each key, ignore it and expect its tests to fail.

"Ignored" means the config reader hands every consumer the value a hard-coded implementation would use
(the key's default; the example config's value for a key without one) while still validating the file:
``tests/config_keys.py:ignore_key``. Each key's tests (``KEY_TESTS`` there) then run in a fresh pytest
process with the change installed in every Python process, subprocesses included
(``tests/config_mutation/sitecustomize.py``). A key whose tests still pass "survived": the suite would not
notice the key being dropped.

    .venv/bin/python scripts/config_keys.py                   # every key of KEY_TESTS (minutes)
    .venv/bin/python scripts/config_keys.py prepare.compression.scaling_factor
    .venv/bin/python scripts/config_keys.py --discover KEY    # try the tests that mention the key's name

Not part of CI (each key runs pipeline tests); README "Tests" states the figures of the last run.
Tests of the config reader itself (tests/test_config.py) never count: they would fail for the reader's
sake, not because a consumer uses the key.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from tests.config_keys import ENVIRONMENT_VARIABLE, KEY_TESTS, reader_keys  # noqa: E402

# The reader's own tests, and this check's: they would fail for the reader's sake, not a consumer's.
READER_TESTS = ("tests/test_config.py", "tests/test_config_keys.py")
# --discover: after the tests that mention a key, the tests of the commands that read its section.
SECTION_FILES = {
    "dataset": ("tests/test_prepare_pipeline.py", "tests/test_export_pipeline.py", "tests/test_profile_pipeline.py"),
    "prepare": ("tests/test_illumination.py", "tests/test_prepare_pipeline.py"),
    "profile": ("tests/test_profile_pipeline.py", "tests/test_inference.py"),
    "train": ("tests/test_train.py",),
    "locate": ("tests/test_locate.py",),
    "aggregate": ("tests/test_profiles.py",),
    "evaluate": ("tests/test_profiles.py",),
}
PER_KEY_TIMEOUT_S = 900


def candidate_tests(key: str, limit: int) -> list[str]:
    """The tests that mention the key's last two names, then those of the files reading its section."""
    *_, parent, name = key.split(".")
    found = [test for path in sorted((REPOSITORY / "tests").glob("test_*.py"))
             if path.relative_to(REPOSITORY).as_posix() not in READER_TESTS
             for test in test_functions(path, (parent, name))]
    for path in SECTION_FILES.get(key.split(".", 1)[0], ()):
        found += [test for test in test_functions(REPOSITORY / path) if test not in found]
    return found[:limit]


def test_functions(path: Path, names: tuple[str, ...] = ()) -> list[str]:
    """``path::test_name`` of the module's test functions whose source mentions every one of ``names``."""
    relative = path.relative_to(REPOSITORY).as_posix()
    source = path.read_text()
    return [f"{relative}::{node.name}" for node in ast.parse(source).body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
            and all(re.search(rf"\b{re.escape(name)}\b", ast.get_source_segment(source, node) or "")
                    for name in names)]


def run_ignoring(key: str, tests: list[str]) -> tuple[bool, str, float]:
    """(killed, the first failing test or the reason, seconds): the tests run with ``key`` ignored."""
    environment = dict(os.environ, **{ENVIRONMENT_VARIABLE: key})
    environment["PYTHONPATH"] = os.pathsep.join([str(REPOSITORY / "tests/config_mutation"), str(REPOSITORY),
                                                 environment.get("PYTHONPATH", "")])
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-n", "0",
                               "-o", "addopts=", *tests], cwd=REPOSITORY, env=environment, capture_output=True,
                              text=True, timeout=PER_KEY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, "timed out", time.monotonic() - started
    seconds = time.monotonic() - started
    if done.returncode == 1:
        failed = re.search(r"^FAILED (\S+)", done.stdout, re.M)
        return True, failed.group(1) if failed else "failed", seconds
    if done.returncode == 0:
        return False, "all passed", seconds
    return False, f"pytest exit {done.returncode}: {done.stdout[-500:]}", seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("keys", nargs="*", help="key paths (default: every key of KEY_TESTS)")
    parser.add_argument("--discover", action="store_true",
                        help="run the tests that mention each key's last name instead of KEY_TESTS")
    parser.add_argument("--limit", type=int, default=8, help="--discover: at most this many tests per key")
    args = parser.parse_args(argv)
    known = reader_keys()
    keys = args.keys or (list(known) if args.discover else list(KEY_TESTS))
    survivors, killed = [], 0
    for key in keys:
        if key not in known:
            parser.error(f"{key} is not a key the config reader knows")
        tests = candidate_tests(key, args.limit) if args.discover else list(KEY_TESTS.get(key, ()))
        if not tests:
            print(f"[keys] {key}: no tests named", flush=True)
            survivors.append(key)
            continue
        was_killed, detail, seconds = run_ignoring(key, tests)
        killed += was_killed
        if not was_killed:
            survivors.append(key)
        print(f"[keys] {key}: {'killed by ' if was_killed else 'SURVIVED: '}{detail} ({seconds:.0f} s, "
              f"{len(tests)} test(s))", flush=True)
    print(f"[keys] {killed} of {len(keys)} keys ignored were caught by their tests")
    if survivors:
        print("[keys] not caught: " + ", ".join(survivors))
    return 0 if not survivors else 1


if __name__ == "__main__":
    sys.exit(main())
