"""The README's "Run on Flink / Spark" block, run as a user runs it: its lines, in order, in bash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE, assert_same_prepare
from tests.engines.conftest import COMMIT_TIMEOUT_S, copy_project
from tests.readme_commands import ENGINE_SECTION, README

pytestmark = [pytest.mark.engines, pytest.mark.pipeline]


def readme_block(section: str) -> str:
    """The text of the first ``bash`` block under ``section``."""
    text = README.read_text(encoding="utf-8")
    after = text[text.index(f"## {section}"):]
    start = after.index("```bash\n") + len("```bash\n")
    return after[start:after.index("```", start)]


def test_the_readme_flink_session_starts_serves_and_stops(prepared, tmp_path):
    """engines.py flink start, prepare and export-sc with `$(engines.py flink options ...)`, flink stop:
    the README's lines with only the two folder names replaced; prepare's outputs equal the DirectRunner's."""
    root = copy_project(EXAMPLE, tmp_path / "demo-project")
    script = readme_block(ENGINE_SECTION).replace("/tmp/flink", str(tmp_path / "flink"))
    script = script.replace("demo-project", str(root))
    environment = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    repository = README.parent
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=repository, env=environment,
                          capture_output=True, text=True, timeout=3 * COMMIT_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "plates committed: 1" in done.stdout, done.stdout[-3000:]
    assert_same_prepare(root, prepared[0])
    assert list((root / "outputs/single-cells/_shards").glob("*.json")), "export-sc committed no shard"
    assert not (tmp_path / "flink/cluster.json").exists(), "flink stop leaves no cluster behind"
