"""Dead letters: records that failed, with the reason, in one JSON-lines file.

The file ``<folder>/<name>.jsonl`` is written by the pipeline itself
(Beam's text sink: records stream to a temporary file on one worker, which
is renamed into place when the pipeline finishes), so it exists even when
nobody waits for the job, and no worker holds the failures of a whole
screen. It replaces the file of the previous run and is empty when nothing
failed: it always describes the last run. The same failure reported twice
(a bad image fails statistics and compression) is written once. A record is
a plain dict with at least ``stage``, ``item`` and ``reason``; readers sort.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import apache_beam as beam

from dpcore.storage import S3_PROTOCOLS, StoragePath

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
    """The failures of the last run, de-duplicated and sorted (an empty list if none)."""
    if not target.exists():
        return []
    return _dedupe_and_sort([json.loads(line) for line in target.read_text().splitlines() if line.strip()])


def _write_lines(lines: list[str], url: str) -> str:
    StoragePath(url).write_text("".join(line + "\n" for line in sorted(lines)))
    return url


def _once_key(record: dict) -> tuple[tuple[str, str], str]:
    return (str(record.get("item")), str(record.get("reason"))), json.dumps(record, sort_keys=True)


@dataclass
class WriteDeadLetters(beam.PTransform):
    """Stream failure records from any number of PCollections into one JSON-lines file."""

    target: StoragePath

    def expand(self, failures):
        lines = (
            failures
            | "KeyByItemAndReason" >> beam.Map(_once_key)
            | "OncePerItemAndReason" >> beam.CombinePerKey(min)
            | "Lines" >> beam.Values()
        )
        if self.target.protocol not in S3_PROTOCOLS:
            return lines | "WriteFailureFile" >> beam.io.WriteToText(self.target.url, shard_name_template="",
                                                                    num_shards=1)
        # Beam's S3 file system cannot write an empty file (its multipart upload completes with no part:
        # S3 answers MalformedXML), and no failure is the usual case: on s3:// the lines are gathered
        # on one worker -- the failures only, never the screen -- and written through fsspec.
        return (
            lines
            | "AllLines" >> beam.combiners.ToList()
            | "WriteFailureFile" >> beam.Map(_write_lines, self.target.url)
        )

    def __post_init__(self):
        super().__init__()
