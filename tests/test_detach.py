"""What ``--detach`` waits for on each runner before the launcher may exit, and what it refuses.

A detached launcher that exits while the job still lives in a job server it started loses the job
(found on a real Flink cluster: the job server died before submitting). These tests pin the rules
without an engine; tests/engines/test_flink.py runs the real thing.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from beam_pipelines.running import FlinkHandoff, PipelineFailed, engine_handoff
from tests.conftest import run_cli


def handoff(*argv: str):
    options = PipelineOptions(list(argv))
    return engine_handoff(options, "dpbeam.export_sc"), options


def test_runners_that_own_their_jobs_need_no_wait():
    assert handoff("--runner", "DataflowRunner")[0] is None
    assert handoff("--runner", "DirectRunner")[0] is None
    # A job server the user runs outlives this launcher.
    assert handoff("--runner", "PortableRunner", "--job_endpoint", "localhost:8099")[0] is None
    assert handoff("--runner", "FlinkRunner", "--job_endpoint", "localhost:8099")[0] is None


def test_flink_cluster_waits_for_a_uniquely_named_job():
    first, options = handoff("--runner", "FlinkRunner", "--flink_master", "jm.example.org:8081")
    second, _ = handoff("--runner", "FlinkRunner", "--flink_master", "http://jm.example.org:8081/")
    assert first.rest_url == "http://jm.example.org:8081" and second.rest_url == "http://jm.example.org:8081"
    assert first.job_name.startswith("dpbeam-export_sc-") and first.job_name != second.job_name
    # The name is set on the options the job is submitted with: that is how Flink's job is recognised.
    assert options.view_as(GoogleCloudOptions).job_name == first.job_name
    named, _ = handoff("--runner", "FlinkRunner", "--flink_master", "jm:8081", "--job_name", "nightly-42")
    assert named.job_name == "nightly-42"


@pytest.mark.parametrize("argv, says", [
    (["--runner", "SparkRunner"], "Spark job server"),
    (["--runner", "FlinkRunner"], "--flink_master [auto]"),
    (["--runner", "FlinkRunner", "--flink_master", "[local]"], "--flink_master [local]"),
])
def test_detach_refuses_where_the_job_would_die_with_the_launcher(argv, says):
    with pytest.raises(ValueError, match="would lose the job") as error:
        handoff(*argv)
    assert says in str(error.value)


def test_the_cli_refuses_before_anything_runs(project):
    code, text = run_cli("--root", str(project), "--config", "bbbc022.json", "prepare", "--detach",
                         "--runner", "SparkRunner")
    assert code == 2 and "would lose the job" in text, text
    assert not (project / "outputs").exists()


class _FakeJobManager(BaseHTTPRequestHandler):
    jobs: list[dict] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = json.dumps({"jobs": self.jobs}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def jobmanager():
    server = HTTPServer(("127.0.0.1", 0), _FakeJobManager)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_waits_until_flink_lists_the_job(jobmanager):
    _FakeJobManager.jobs = [{"name": "other", "state": "RUNNING"}]
    late = threading.Timer(1.0, lambda: _FakeJobManager.jobs.append({"name": "mine", "state": "INITIALIZING"}))
    late.start()
    FlinkHandoff(jobmanager, "mine", timeout_s=20).wait_until_the_engine_has_the_job()
    assert late.finished.is_set()


def test_a_failed_or_missing_job_is_an_error(jobmanager):
    _FakeJobManager.jobs = [{"name": "mine", "state": "FAILED"}]
    with pytest.raises(PipelineFailed, match="FAILED"):
        FlinkHandoff(jobmanager, "mine", timeout_s=5).wait_until_the_engine_has_the_job()
    _FakeJobManager.jobs = []
    with pytest.raises(PipelineFailed, match="never listed"):
        FlinkHandoff(jobmanager, "mine", timeout_s=1).wait_until_the_engine_has_the_job()
