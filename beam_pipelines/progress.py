"""Beam metrics in one place: counters for progress, read back for the summary."""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

logger = logging.getLogger(__name__)


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
