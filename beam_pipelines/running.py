"""One way to run a command's pipeline: build, submit, and wait only if someone is there to wait.

Every commit (plate markers, shard records, manifests, dead letters) is a step
of the pipeline itself, so a job submitted from a Flex Template, an Airflow
operator or ``--detach`` finishes its work without the launcher. When the
launcher does wait, it only reads back what the pipeline committed to print a
summary; nothing depends on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from dpcore.storage import StoragePath

from beam_pipelines.progress import counter_values

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
                 test_pipeline: beam.Pipeline | None = None) -> PipelineRun:
    """Build the pipeline with ``build(pipeline)`` and run it.

    ``detach``: return as soon as the runner accepted the job (the DirectRunner
    runs it to the end before accepting anything). ``commit`` names the file
    whose appearance tells that the job finished, for the message.
    """
    pipeline = test_pipeline or beam.Pipeline(options=PipelineOptions(list(beam_args)))
    build(pipeline)
    result = pipeline.run()
    if detach:
        job = getattr(result, "job_id", None)
        job_id = job() if callable(job) else job
        where = f"; it has finished when {commit} exists" if commit is not None else ""
        return PipelineRun(detached=True, result=result, detached_message=(
            f"submitted{f' as job {job_id}' if job_id else ''} (--detach): the pipeline commits its own outputs"
            f"{where}; failures go to its dead-letter file"))
    state = result.wait_until_finish()
    if state not in (None, PipelineState.DONE):
        raise PipelineFailed(f"the pipeline ended in state {state}")
    return PipelineRun(counters=counter_values(result, namespace), result=result)
