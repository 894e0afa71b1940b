"""prepare, export-sc and profile on a real Flink cluster, outputs byte-identical to the DirectRunner's.

The cluster (conftest.flink_cluster) is Flink 1.19.3 with a JobManager and two TaskManagers as separate
JVMs on 127.0.0.1; Beam's Flink job server submits to it; Python SDK workers come from an external
worker pool (``--environment_type EXTERNAL``), parallelism 2. The options are exactly
``scripts/engines.py flink options``, the ones the README shows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import (EXAMPLE, assert_same_export, assert_same_features, assert_same_prepare,
                            cnn_profile_project)
from tests.engines.conftest import COMMIT_TIMEOUT_S, copy_project, direct, run_on, wait_for_commit

pytestmark = [pytest.mark.engines, pytest.mark.pipeline]


def launch_detached(root, config: str, command: str, options: list[str], *extra: str) -> None:
    """``dpbeam COMMAND --detach`` from a process that exits once Flink has the job."""
    done = subprocess.run([sys.executable, "-m", "beam_pipelines", "--root", str(root), "--config", config,
                           command, "--detach", *extra, *options], capture_output=True, text=True,
                          timeout=COMMIT_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "submitted" in done.stdout, done.stdout


def newest_job(cluster) -> dict:
    return max(cluster.jobs(), key=lambda job: job["start-time"])


def finished_job(cluster, timeout_s: float = 120) -> dict:
    """The newest job once Flink has ended it. The commit file is written by the job's last step, so the
    job may still be RUNNING (tasks finishing, slots being released) for a moment after it appears."""
    deadline = time.time() + timeout_s
    while (job := newest_job(cluster))["state"] not in ("FINISHED", "FAILED", "CANCELED"):
        assert time.time() < deadline, f"Flink job still {job['state']} {timeout_s:.0f} s after its commit"
        time.sleep(0.5)
    return job


def exception_history(cluster, job_id: str) -> list[dict]:
    with urllib.request.urlopen(f"http://{cluster.rest_address}/jobs/{job_id}/exceptions", timeout=10) as answer:
        return json.load(answer)["exceptionHistory"]["entries"]


def test_prepare_on_flink_cluster_matches_direct(flink_cluster, prepared, tmp_path):
    root = copy_project(EXAMPLE, tmp_path / "project")
    text = run_on(root, "bbbc022.json", "prepare", flink_cluster.beam_options())
    # Beam's counters come back from Flink: the summary is the engine's, not a guess.
    assert "plates committed: 1" in text and "PNGs written: 60" in text, text
    assert_same_prepare(root, prepared[0])
    assert finished_job(flink_cluster)["state"] == "FINISHED"


def test_export_survives_a_killed_taskmanager(flink_cluster, prepared, tmp_path):
    """kill -9 a TaskManager while export-sc writes shards: Flink restarts the work on the TaskManager
    left, the launcher long gone (``--detach``); the export is complete and equal to the DirectRunner's,
    file for file, with no duplicate or partial file."""
    reference = copy_project(prepared[0], tmp_path / "direct")
    direct(reference, "bbbc022.json", "export-sc", "--shard-mb", "2")
    root = copy_project(prepared[0], tmp_path / "flink")
    launch_detached(root, "bbbc022.json", "export-sc", flink_cluster.beam_options(), "--shard-mb", "2")

    records = root / "outputs/single-cells/_shards"
    deadline = time.time() + COMMIT_TIMEOUT_S
    while not (records.is_dir() and any(records.glob("*.json"))):
        assert time.time() < deadline, "no shard was ever committed"
        time.sleep(0.05)
    written_before = len(list(records.glob("*.json")))
    victim = flink_cluster.busy_taskmanager()
    flink_cluster.kill_taskmanager(victim)
    try:
        assert not (root / "outputs/single-cells/manifest.json").exists(), "the export had already finished"
        wait_for_commit(root / "outputs/single-cells/manifest.json", flink_cluster)
        job = finished_job(flink_cluster)
        assert job["state"] == "FINISHED"
        failures = exception_history(flink_cluster, job["jid"])
        assert failures, "Flink recorded no failure: the kill did not hit the running job"
    finally:
        flink_cluster.start_taskmanager(victim)
        flink_cluster.wait_for_slots(4)
    manifest = json.loads((root / "outputs/single-cells/manifest.json").read_text())
    assert written_before < sum(manifest["shard_counts"].values())
    assert_same_export(root, reference)


def test_profile_detached_on_flink_matches_direct(flink_cluster, prepared, tmp_path, example_config_dict):
    reference, config = cnn_profile_project(prepared[0], tmp_path / "direct", example_config_dict)
    direct(reference, config, "profile")
    root, _ = cnn_profile_project(prepared[0], tmp_path / "flink", example_config_dict)
    launch_detached(root, config, "profile", flink_cluster.beam_options())
    wait_for_commit(root / "outputs/results/features/_runs/index.json", flink_cluster)
    assert_same_features(root, reference, sites=12)
    record = json.loads((root / "outputs/results/features/_runs/index.json").read_text())
    assert record["sites_written"] == 12 and record["cells_profiled"] == 808
