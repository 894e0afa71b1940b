"""Dead letters: records that failed, with the reason, in one JSON-lines file.

Failures are few next to the work, so they are gathered into one list and
written as ``<folder>/<name>.jsonl``, sorted, replacing the file of the
previous run (an empty run removes it): the file always describes the last
run. A record is a plain dict with at least ``stage``, ``item`` and ``reason``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import apache_beam as beam

from dpcore.storage import StoragePath

logger = logging.getLogger(__name__)


def failure(stage: str, item: str, reason: str, **details: str) -> dict[str, str]:
    record = {"stage": stage, "item": item, "reason": reason}
    record.update({k: str(v) for k, v in details.items()})
    return record


def _dedupe_and_sort(records: list[dict]) -> list[dict]:
    # The same bad file can fail in two passes (statistics, then compression): report it once.
    unique = {}
    for record in records:
        unique.setdefault((record.get("item"), record.get("reason")), record)
    return sorted(unique.values(), key=lambda r: (r.get("item", ""), r.get("stage", ""), r.get("reason", "")))


def write_failures(records: list[dict], target: StoragePath) -> int:
    records = _dedupe_and_sort(records)
    if not records:
        target.remove()
        return 0
    target.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return len(records)


def report_failures(failures: list[dict], target: StoragePath, emit, shown: int = 20) -> int:
    """Print the failures of a run for a person; return the command's exit status (1 if any)."""
    if not failures:
        return 0
    emit(f"{len(failures)} failure(s), listed in {target}:")
    for record in failures[:shown]:
        emit(f"  - [{record['stage']}] {record['item']}: {record['reason']}")
    if len(failures) > shown:
        emit(f"  ... and {len(failures) - shown} more")
    return 1


def read_failures(target: StoragePath) -> list[dict]:
    if not target.exists():
        return []
    return [json.loads(line) for line in target.read_text().splitlines() if line.strip()]


@dataclass
class WriteDeadLetters(beam.PTransform):
    """Gather failure records from any number of PCollections into one file."""

    target: StoragePath

    def expand(self, failures):
        return (
            failures
            | "GatherFailures" >> beam.combiners.ToList()
            | "WriteFailureFile" >> beam.Map(write_failures, self.target)
        )

    def __post_init__(self):
        super().__init__()
