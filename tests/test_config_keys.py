"""The key -> test table of tests/config_keys.py is complete and true, and ignoring a key really ignores it.

The full check (every key ignored in turn, its tests expected to fail) is ``scripts/config_keys.py``:
minutes per key, so it is run by hand and its figures are in the README; here it runs for one key.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.config_keys import (ENVIRONMENT_VARIABLE, EXAMPLE_CONFIG, KEY_TESTS, NOT_YET_CAUGHT, REPOSITORY,
                               reader_keys)


def test_every_key_is_in_the_table_with_tests_that_exist():
    keys = set(reader_keys())
    assert set(KEY_TESTS) | set(NOT_YET_CAUGHT) == keys, "keys missing from tests/config_keys.py"
    assert not set(KEY_TESTS) & set(NOT_YET_CAUGHT)
    for key, tests in KEY_TESTS.items():
        assert tests, key
        for test in tests:
            module, name = test.split("::")
            assert module != "tests/test_config.py", f"{key}: the reader's own tests do not show a consumer"
            assert re.search(rf"^def {name}\(", (REPOSITORY / module).read_text(), re.M), f"{key}: {test}"


def test_an_ignored_key_reaches_no_consumer_in_any_process():
    """With the variable set and tests/config_mutation on the path, a fresh process's config reader still
    validates the key but hands out the default (or, without one, the example's value)."""
    data = json.loads(EXAMPLE_CONFIG.read_text())
    data["prepare"]["compression"]["scaling_factor"] = 0.5
    data["dataset"]["locations"]["box_size"] = 64
    probe = ("import json, sys\nfrom dpcore.config import parse_config\nc = parse_config(json.loads(sys.argv[1]))\n"
             "print(c.prepare.compression.scaling_factor, c.dataset.locations.box_size)")
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPOSITORY / "tests/config_mutation"),
                                                                 str(REPOSITORY)]))
    for key, printed in ((None, "0.5 64"), ("prepare.compression.scaling_factor", "1.0 64"),
                         ("dataset.locations.box_size", "0.5 128")):
        environment.pop(ENVIRONMENT_VARIABLE, None)
        if key:
            environment[ENVIRONMENT_VARIABLE] = key
        done = subprocess.run([sys.executable, "-c", probe, json.dumps(data)], env=environment, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.split("\n")[0] == printed, (key, done.stdout, done.stderr[-800:])


def test_the_check_catches_an_ignored_key():
    key = "aggregate.operation"
    done = subprocess.run([sys.executable, "scripts/config_keys.py", key], cwd=REPOSITORY, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and f"[keys] {key}: killed by " in done.stdout, \
        done.stdout[-2000:] + done.stderr[-2000:]
