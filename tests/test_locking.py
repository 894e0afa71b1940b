"""One writer per output area: a second command refuses clearly; nothing is corrupted."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from dpcore.locking import LockedError, output_lock
from dpcore.storage import StoragePath
from tests.conftest import EXAMPLE, run_cli
from tests.test_prepare_pipeline import load_npz, output_files


def test_a_held_lock_refuses_a_second_writer_and_is_released(tmp_path):
    folder = StoragePath(str(tmp_path / "outputs" / "intensities"))
    with output_lock(folder, "prepare") as lock:
        assert lock.name == ".intensities.dpbeam-lock"
        with pytest.raises(LockedError) as refused:
            with output_lock(folder, "prepare"):
                pass
        assert "'prepare'" in str(refused.value) and f"pid {os.getpid()}" in str(refused.value)
    assert not lock.exists()
    with output_lock(folder, "prepare"):
        pass


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = StoragePath(str(tmp_path / "features"))
    (tmp_path / ".features.dpbeam-lock").write_text(json.dumps(
        {"command": "profile", "host": socket.gethostname(), "pid": dead.pid, "started": 0}))
    with output_lock(folder, "profile"):
        pass
    assert "taking over the lock" in caplog.text


@pytest.mark.pipeline
def test_two_prepare_runs_started_together_never_corrupt_outputs(tmp_path, prepared):
    import shutil

    root = tmp_path / "project"
    shutil.copytree(EXAMPLE, root)
    command = [sys.executable, "-m", "beam_pipelines", "--root", str(root), "--config", "bbbc022.json", "prepare"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    results = [(run.wait(timeout=300), run.stdout.read()) for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    if codes == [0, 2]:
        refused = [text for code, text in results if code == 2][0]
        assert "refused" in refused and "is being written by 'prepare'" in refused
    assert output_files(root) == output_files(prepared[0])
    for key, value in load_npz(prepared[0]).items():
        assert (load_npz(root)[key] == value).all(), key
    assert not (root / "outputs/.intensities.dpbeam-lock").exists()


def test_a_command_refused_by_a_lock_exits_2_and_writes_nothing(project):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (project / "outputs").mkdir(exist_ok=True)
        (project / "outputs/.intensities.dpbeam-lock").write_text(json.dumps(
            {"command": "prepare", "host": socket.gethostname(), "pid": holder.pid, "started": 0}))
        code, text = run_cli("--root", str(project), "--config", "bbbc022.json", "prepare")
        assert code == 2 and "refused" in text and f"pid {holder.pid}" in text
        assert not (project / "outputs/intensities/20585").exists()
    finally:
        holder.kill()
