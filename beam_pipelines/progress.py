"""Progress of a running pipeline, and Beam metrics read back for the summary.

While a pipeline runs on this machine (the DirectRunner, a local Flink or Spark) the launcher cannot
query its counters: the DirectRunner returns only when the job is done. What it can see is the
committed output itself. :class:`OutputProgress` counts the files a command commits (PNGs, shard
records, per-site Parquet files) that are newer than the run's start, every ``DPBEAM_PROGRESS_SECONDS``, and
logs a line with the rate and time left. It only reads local folders; on Dataflow, the job's page
shows progress.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

from dpcore.progress import Progress, progress_seconds
from dpcore.storage import StoragePath

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputProgress:
    """``what``: e.g. "prepare"; files ending in ``suffix`` under ``folders`` count as ``unit`` done."""

    what: str
    folders: Sequence[StoragePath]
    suffix: str
    unit: str
    total: int | None

    @property
    def local(self) -> bool:
        return all(folder.is_local for folder in self.folders)

    def count_since(self, started: float) -> int:
        """Files committed since ``started`` (wall-clock seconds); temporary ``.*.tmp`` files do not count."""
        done = 0
        for folder in self.folders:
            for directory, _, files in os.walk(folder.url):
                for name in files:
                    if name.endswith(self.suffix) and not name.startswith("."):
                        with contextlib.suppress(FileNotFoundError):
                            done += os.stat(os.path.join(directory, name)).st_mtime >= started
        return done


@contextlib.contextmanager
def reporting(progress: OutputProgress | None) -> Iterator[None]:
    """Log ``progress`` periodically while the block runs (a daemon thread; nothing if not local)."""
    if progress is None or not progress.local:
        yield
        return
    started = time.time() - 1.0  # file times have coarse resolution on some file systems
    stop = threading.Event()
    reporter = Progress(progress.what, progress.total, progress.unit, every_s=0.0)
    every_s = progress_seconds()

    def watch() -> None:
        while not stop.wait(every_s):
            reporter.update(progress.count_since(started), force=True)

    thread = threading.Thread(target=watch, name=f"{progress.what}-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


class ZeroForMissing(dict):
    """Counters for a summary line: a counter the run never incremented reads 0."""

    def __missing__(self, key: str) -> int:
        return 0


def inc_counter(namespace: str, name: str, value: int = 1) -> None:
    beam.metrics.Metrics.counter(namespace, name).inc(value)


def counter_values(result: beam.runners.runner.PipelineResult, namespace: str) -> dict[str, int]:
    """Committed counter values of a finished pipeline (0 for counters never incremented)."""
    values: dict[str, int] = {}
    try:
        query = result.metrics().query(MetricsFilter().with_namespace(namespace))
    except (NotImplementedError, AttributeError):  # some runners report no metrics
        logger.warning("this runner reports no metrics; the summary shows files only")
        return values
    for counter in query.get("counters", []):
        name = counter.key.metric.name
        value = counter.committed if counter.committed is not None else counter.attempted
        values[name] = values.get(name, 0) + int(value or 0)
    return values
