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
from tests.conftest import EXAMPLE, load_npz, output_files, run_cli


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


# command, its lock file, what it would write (absent after a refusal), and the project it needs
LOCKED_COMMANDS = [
    ("prepare", "outputs/.intensities.dpbeam-lock", "outputs/intensities/20585", "example"),
    ("locate", "inputs/.locations.dpbeam-lock", "inputs/locations/20585", "no locations"),
    ("export-sc", "outputs/.single-cells.dpbeam-lock", "outputs/single-cells/manifest.json", "prepared"),
    ("profile", "outputs/results/.features.dpbeam-lock", "outputs/results/features/20585", "cnn"),
    ("train", "outputs/results/.checkpoint.dpbeam-lock", "outputs/results/logs/log.csv", "exported"),
    ("aggregate", "outputs/results/.profiles.dpbeam-lock", "outputs/results/profiles/_manifest.json", "features"),
]


@pytest.mark.parametrize("command, lock, written, kind", LOCKED_COMMANDS, ids=[c[0] for c in LOCKED_COMMANDS])
def test_a_command_refused_by_a_lock_exits_2_and_writes_nothing(command, lock, written, kind, tmp_path, prepared,
                                                                exported, example_config_dict):
    """A real second process holds each writing command's lock; the command exits 2 naming it."""
    import shutil

    from tests.conftest import cnn_profile_project, write_config, write_synthetic_features

    root, config = tmp_path / "project", "bbbc022.json"
    if kind == "example":
        shutil.copytree(EXAMPLE, root)
    elif kind == "no locations":
        shutil.copytree(EXAMPLE, root)
        shutil.rmtree(root / "inputs/locations")
    elif kind == "prepared":
        shutil.copytree(prepared[0], root)
    elif kind == "exported":
        shutil.copytree(exported[0], root)
    elif kind == "cnn":
        root, config = cnn_profile_project(prepared[0], root, example_config_dict)
    else:
        config = write_config(root, write_synthetic_features(root))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (root / lock).parent.mkdir(parents=True, exist_ok=True)
        (root / lock).write_text(json.dumps(
            {"command": command, "host": socket.gethostname(), "pid": holder.pid, "started": 0}))
        code, text = run_cli("--root", str(root), "--config", config, command)
        assert code == 2 and "refused" in text and f"pid {holder.pid}" in text, text
        assert not (root / written).exists()
        assert (root / lock).exists()  # the holder's lock is left alone
    finally:
        holder.kill()
