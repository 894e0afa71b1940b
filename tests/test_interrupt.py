"""Ctrl-C: one line, exit 130, consistent outputs, and a re-run that finishes the work.

The command runs in its own process group and the whole group gets SIGINT, as a terminal delivers Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import assert_same_export, run_cli

pytestmark = pytest.mark.pipeline


def test_ctrl_c_during_export_says_one_line_and_a_rerun_completes(exported, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(exported[0], root)
    shutil.rmtree(root / "outputs/single-cells")
    command = [sys.executable, "-m", "beam_pipelines", "--root", str(root), "--config", "bbbc022.json",
               "export-sc", "--shard-mb", "10"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    plan = root / "outputs/single-cells/_plan.json"
    deadline = time.time() + 120
    while not plan.exists():  # the pipeline is being built or running: interrupt it mid-work
        assert process.poll() is None and time.time() < deadline, process.communicate()[0]
        time.sleep(0.05)
    time.sleep(1.0)
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=60)

    assert process.returncode == 130, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "interrupted" in line]
    assert lines == ["dpbeam export-sc: interrupted; outputs are consistent (every file is committed whole), "
                     "re-run the same command to continue"], output
    assert not (root / "outputs/single-cells/manifest.json").exists()

    code, text = run_cli("--root", str(root), "--config", "bbbc022.json", "export-sc", "--shard-mb", "10")
    assert code == 0, text
    assert_same_export(root, exported[0])
