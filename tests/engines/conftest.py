"""Real engines for the tests in this folder: a Flink session cluster and Spark, from scripts/engines.py.

These tests are marked ``engines`` and deselected from the main suite (pytest.ini); CI runs them as a
second command, ``bash scripts/test_engines.sh``. They fail, never skip, when the engines were not fetched.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts import engines
from tests.conftest import run_cli

COMMIT_TIMEOUT_S = 420


@pytest.fixture(scope="session")
def flink_cluster(tmp_path_factory):
    """Flink 1.19 on 127.0.0.1: a JobManager and two TaskManagers of 2 slots each (separate JVMs), a
    Python SDK worker pool; Beam runs with parallelism 2. Two TaskManagers, so that one can be killed."""
    engines.require_fetched()
    cluster = engines.LocalFlinkCluster(tmp_path_factory.mktemp("flink"), taskmanagers=2, slots=2, parallelism=2)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def spark_options(tmp_path_factory) -> list[str]:
    """Beam options for Spark ``local[2]`` in Beam's Spark job server, SDK workers from an external pool."""
    engines.require_fetched()
    port = engines.free_port()
    pool = engines.start_worker_pool(tmp_path_factory.mktemp("spark-workers"), port)
    yield engines.spark_options(f"127.0.0.1:{port}")
    os.killpg(pool.pid, signal.SIGTERM)
    pool.wait(timeout=30)


def run_on(root: Path, config: str, command: str, options: list[str], *extra: str) -> str:
    """``dpbeam COMMAND`` on an engine, in its own process as a user runs it; its output."""
    done = subprocess.run([sys.executable, "-m", "beam_pipelines", "--root", str(root), "--config", config,
                           command, *extra, *options], capture_output=True, text=True, timeout=COMMIT_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout


def direct(root: Path, config: str, command: str, *extra: str) -> None:
    code, text = run_cli("--root", str(root), "--config", config, command, *extra)
    assert code == 0, text


def wait_for_commit(path: Path, cluster, timeout_s: float = COMMIT_TIMEOUT_S) -> None:
    """Wait for a detached job's own commit file; fail at once if Flink reports the job failed."""
    deadline = time.time() + timeout_s
    while not path.exists():
        failed = [job for job in cluster.jobs() if job["state"] in ("FAILED", "CANCELED")]
        assert not failed, f"Flink job failed: {failed}; logs in {cluster.work / 'log'}"
        assert time.time() < deadline, f"{path} was never committed; logs in {cluster.work / 'log'}"
        time.sleep(0.5)


def copy_project(source: Path, target: Path, *drop: str) -> Path:
    shutil.copytree(source, target)
    for relative in drop:
        shutil.rmtree(target / relative)
    return target
