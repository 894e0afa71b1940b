"""prepare, export-sc and profile on Beam's portable runner, launched without waiting.

The job server (Beam's local job service) and an external worker pool run as
separate processes, started here; each pipeline runs on two SDK worker
processes spawned by the pool (``--environment_type EXTERNAL``), the Fn API
path Flink and Dataflow Runner v2 use. Every command is launched with
``--detach`` from a process that exits as soon as the job is accepted, as a
Flex Template launcher or a scheduler would: the outputs must then commit
themselves, and equal the DirectRunner's byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts import engines
from tests.conftest import (EXAMPLE, assert_same_export, assert_same_features, assert_same_prepare,
                            cnn_profile_project, run_cli)

# One xdist worker runs the whole module: its job server and worker pool (a module fixture) starts once (scripts/test.sh).
pytestmark = [pytest.mark.pipeline, pytest.mark.xdist_group("portable_runner")]
COMMIT_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def portable(tmp_path_factory) -> list[str]:
    """A job server and an external SDK worker pool, as two processes; the Beam options to use them."""
    folder = tmp_path_factory.mktemp("portable")
    job_port, pool_port = engines.free_port(), engines.free_port()
    log = folder / "job-server.log"
    job_server = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", "--port", str(job_port)],
        cwd=folder, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    engines.wait_for_port(job_port, job_server, log)
    pool = engines.start_worker_pool(folder / "workers", pool_port, log=folder / "worker-pool.log")
    started = [job_server, pool]
    Services.logs = [log, folder / "worker-pool.log"]
    yield ["--runner", "PortableRunner", "--job_endpoint", f"localhost:{job_port}",
           "--environment_type", "EXTERNAL", "--environment_config", f"localhost:{pool_port}",
           "--direct_num_workers", "2"]
    for process in started:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def launch_detached(root: Path, config: str, command: str, options: list[str], *extra: str) -> float:
    """Run ``dpbeam ... COMMAND --detach`` in its own process; return when that process has exited."""
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "beam_pipelines", "--root", str(root), "--config", config, command, "--detach",
         *extra, *options], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted" in done.stdout and "commits its own outputs" in done.stdout, done.stdout
    return time.time() - started


class Services:
    logs: list[Path] = []


def wait_for(path: Path, timeout_s: float = COMMIT_TIMEOUT_S) -> None:
    """Wait for the pipeline's own commit; fail at once if the job server or a worker reports an error."""
    deadline = time.time() + timeout_s
    while not path.exists():
        for log in Services.logs:
            text = log.read_text()
            assert "Traceback" not in text and "Error running pipeline" not in text, f"{log.name}:\n{text[-3000:]}"
        assert time.time() < deadline, f"{path} was never committed"
        time.sleep(0.5)


def test_prepare_detached_on_external_workers_commits_and_matches(portable, prepared, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(EXAMPLE, root)
    stale = root / "outputs/intensities/_runs/index.json"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"left by": "an earlier run"}')  # must not pass for this run's record
    launch_detached(root, "bbbc022.json", "prepare", portable)
    wait_for(root / "outputs/intensities/_runs/index.json")  # the run's last step: plates and dead letters done
    record = json.loads((root / "outputs/intensities/_runs/index.json").read_text())
    assert record["plates_committed"] == ["20585"] and record["failures"] == 0, record
    assert_same_prepare(root, prepared[0])


def test_export_detached_on_external_workers_commits_and_matches(portable, exported, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(exported[0], root)
    shutil.rmtree(root / "outputs/single-cells")
    launch_detached(root, "bbbc022.json", "export-sc", portable, "--shard-mb", "10")
    wait_for(root / "outputs/single-cells/manifest.json")
    assert_same_export(root, exported[0])


def test_profile_detached_on_external_workers_commits_and_matches(portable, prepared, tmp_path,
                                                                  example_config_dict):
    roots = [cnn_profile_project(prepared[0], tmp_path / name, example_config_dict)
             for name in ("direct", "portable")]
    (direct, config), (detached, _) = roots
    code, text = run_cli("--root", str(direct), "--config", config, "profile")
    assert code == 0, text
    launch_detached(detached, config, "profile", portable)
    wait_for(detached / "outputs/results/features/_runs/index.json")
    # Fixed-shape inference batches: a cell's features do not depend on how cells were batched.
    assert_same_features(detached, direct, sites=12)
    record = json.loads((detached / "outputs/results/features/_runs/index.json").read_text())
    assert record["sites_written"] == 12 and record["cells_profiled"] == 808
