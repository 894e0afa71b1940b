"""One way to run a command's pipeline: build, submit, and wait only if someone is there to wait.

Every commit (plate markers, shard records, manifests, dead letters) is a step
of the pipeline itself, so a job submitted from a Flex Template, an Airflow
operator or ``--detach`` finishes its work without the launcher. When the
launcher does wait, it only reads back what the pipeline committed to print a
summary; nothing depends on it.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import (FlinkRunnerOptions, GoogleCloudOptions, PipelineOptions,
                                                  PortableOptions, StandardOptions)
from apache_beam.runners.runner import PipelineState

from dpcore.storage import StoragePath

from beam_pipelines.progress import OutputProgress, counter_values, reporting

logger = logging.getLogger(__name__)


class PipelineFailed(RuntimeError):
    """The runner reports that the job did not finish."""


@dataclass
class PipelineRun:
    counters: dict = field(default_factory=dict)
    detached: bool = False
    detached_message: str = ""
    result: Any = None


def run_pipeline(build: Callable[[beam.Pipeline], None], beam_args: Sequence[str], namespace: str, *,
                 detach: bool = False, commit: StoragePath | None = None,
                 progress: OutputProgress | None = None,
                 test_pipeline: beam.Pipeline | None = None) -> PipelineRun:
    """Build the pipeline with ``build(pipeline)`` and run it.

    ``detach``: return as soon as the runner accepted the job (the DirectRunner
    runs it to the end before accepting anything). ``commit`` names the file
    whose appearance tells that the job finished, for the message. ``progress``
    is logged periodically while a job writing to local folders runs.
    """
    options = PipelineOptions(list(beam_args))
    handoff = engine_handoff(options, namespace) if detach and test_pipeline is None else None
    pipeline = test_pipeline or beam.Pipeline(options=options)
    build(pipeline)
    with reporting(None if detach else progress):
        result = pipeline.run()
        state = None if detach else result.wait_until_finish()
    if detach:
        if handoff is not None:
            handoff.wait_until_the_engine_has_the_job()
        job = getattr(result, "job_id", None)
        job_id = handoff.job_name if handoff is not None else (job() if callable(job) else job)
        where = f"; it has finished when {commit} exists" if commit is not None else ""
        return PipelineRun(detached=True, result=result, detached_message=(
            f"submitted{f' as job {job_id}' if job_id else ''} (--detach): the pipeline commits its own outputs"
            f"{where}; failures go to its dead-letter file"))
    if state not in (None, PipelineState.DONE):
        raise PipelineFailed(f"the pipeline ended in state {state}")
    return PipelineRun(counters=counter_values(result, namespace), result=result)


def describe_graph(build: Callable[[beam.Pipeline], None], beam_args: Sequence[str], depth: int = 2) -> list[str]:
    """``--dry-run``: build the pipeline as a run would, translate it, and list its steps; run nothing.

    Building reads no input and writes nothing (the steps only read and write when they run), so this
    shows what would be submitted to the chosen runner without touching the project.
    """
    options = PipelineOptions(list(beam_args))
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    pipeline = beam.Pipeline(runner=beam.runners.DirectRunner(), options=options)  # never submitted
    build(pipeline)
    proto = pipeline.to_runner_api()
    components = proto.components
    transforms = components.transforms
    names: list[str] = []

    def visit(transform_id: str, level: int) -> None:  # in the order the pipeline was built
        transform = transforms[transform_id]
        named = bool(transform.unique_name) and not transform.unique_name.startswith("ref_")
        if named:
            names.append("  " * level + transform.unique_name.rsplit("/", 1)[-1])
        if not named or level + 1 < depth:  # unnamed wrappers do not count as a level
            for child in transform.subtransforms:
                visit(child, level + named)

    for root in proto.root_transform_ids:
        visit(root, 0)
    leaves = sum(1 for t in transforms.values() if not t.subtransforms)
    lines = [f"dry run: built the job graph for {runner} ({leaves} primitive steps, "
             f"{len(components.pcollections)} collections); nothing was run, written or removed. Steps:"]
    return lines + [f"  {name}" for name in names]


@dataclass(frozen=True)
class FlinkHandoff:
    """Waits, after submission, until a Flink cluster lists the job by name.

    With ``--runner FlinkRunner`` and no ``--job_endpoint``, Beam starts the job server in this process's
    tree and stops it when this process exits; until the job server has submitted the job graph to
    the JobManager, the job exists only there. ``--detach`` must not exit before that."""
    rest_url: str
    job_name: str
    timeout_s: float = 600

    def wait_until_the_engine_has_the_job(self) -> None:
        deadline = time.time() + self.timeout_s
        while True:
            state = self._state()
            if state in ("FAILED", "CANCELED", "CANCELLING"):
                raise PipelineFailed(f"Flink job {self.job_name} is {state}; see {self.rest_url}/#/job/completed")
            if state is not None:
                logger.info("Flink at %s has job %s (%s): this launcher may exit", self.rest_url, self.job_name,
                            state)
                return
            if time.time() > deadline:
                raise PipelineFailed(f"Flink at {self.rest_url} never listed job {self.job_name} "
                                     f"within {self.timeout_s:.0f} s")
            time.sleep(0.5)

    def _state(self) -> str | None:
        try:
            with urllib.request.urlopen(f"{self.rest_url}/jobs/overview", timeout=10) as answer:
                jobs = json.load(answer)["jobs"]
        except (urllib.error.URLError, OSError) as error:
            logger.warning("Flink REST %s not answering yet (%s)", self.rest_url, error)
            return None
        states = [job["state"] for job in jobs if job["name"] == self.job_name]
        return states[-1] if states else None


def engine_handoff(options: PipelineOptions, namespace: str) -> FlinkHandoff | None:
    """What ``--detach`` must wait for on this runner before the launcher may exit, or None.

    Raises ValueError where detaching would lose the job: an engine that lives inside the job server
    this process starts (Flink's ``[local]``/``[auto]``, Spark, whose driver is the job server)."""
    runner = str(options.view_as(StandardOptions).runner or "")
    if options.view_as(PortableOptions).job_endpoint or not runner.endswith(("FlinkRunner", "SparkRunner")):
        return None  # an external job server, Dataflow, or a runner that owns its jobs: nothing to wait for
    if runner.endswith("SparkRunner"):
        raise ValueError(
            "--detach with --runner SparkRunner would lose the job: Beam's Spark job server (started by this "
            "command) is the Spark driver and stops when this command exits. Start the job server yourself "
            "(java -jar SPARK_JOB_SERVER_JAR --spark-master-url ...) and pass --runner PortableRunner "
            "--job_endpoint HOST:8099, or run without --detach.")
    flink = options.view_as(FlinkRunnerOptions)
    master = (flink.flink_master or "[auto]").strip()
    if master in ("[local]", "[auto]", "[collection]"):
        raise ValueError(
            f"--detach with --flink_master {master} would lose the job: that Flink runs inside the job server "
            "this command starts. Give --flink_master HOST:8081 of a Flink cluster, or run without --detach.")
    cloud = options.view_as(GoogleCloudOptions)
    if not cloud.job_name:
        # Beam's portable runner names jobs 'job'; a unique name is how the cluster's job is recognised.
        cloud.job_name = f"dpbeam-{namespace.rsplit('.', 1)[-1]}-{uuid.uuid4().hex[:12]}"
    rest_url = master if master.startswith(("http://", "https://")) else f"http://{master}"
    return FlinkHandoff(rest_url.rstrip("/"), cloud.job_name)
