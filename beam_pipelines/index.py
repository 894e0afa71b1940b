"""Reading the index inside a pipeline: sites streamed on a worker, duplicates found by grouping.

::

    IndexFile -> StreamIndex --(blank cells)--------------------------> failed
                     | Site
                 KeyBySite -> GroupBySite -> FirstRowPerSite --(dup)--> failed
                                                  | Site

The index is read where the pipeline runs, chunk by chunk
(:func:`dpcore.metadata.iter_sites`), so an index of millions of sites never
travels in the job graph and no worker holds it whole. A site listed twice is
kept once (its first line) and the other lines go to the dead letters: finding
them needs every key at once, which is a shuffle here and would be a
screen-sized set on the launcher.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import apache_beam as beam

from dpcore.metadata import MetadataError, Site, iter_sites

from beam_pipelines.dead_letter import failure
from beam_pipelines.progress import inc_counter

logger = logging.getLogger(__name__)

NAMESPACE = "dpbeam.index"


class StreamIndex(beam.DoFn):
    """Index file -> its sites, one chunk of rows in memory at a time."""

    def __init__(self, channels: tuple[str, ...]):
        self.channels = channels

    def process(self, index_path: str) -> Iterator:
        problems: list[str] = []
        try:
            for site in iter_sites(index_path, self.channels, on_problem=problems.append):
                inc_counter(NAMESPACE, "sites_listed")
                yield site
                while problems:
                    yield beam.pvalue.TaggedOutput("failed", failure("index", index_path, problems.pop()))
        except MetadataError as error:  # unreadable or changed since the launcher checked it
            yield beam.pvalue.TaggedOutput("failed", failure("index", index_path, str(error)))
        for problem in problems:
            yield beam.pvalue.TaggedOutput("failed", failure("index", index_path, problem))


def first_row_per_site(element: tuple[str, list[Site]]) -> Iterator:
    """Keep a site's first index line; report the others."""
    key, rows = element
    ordered = sorted(rows, key=lambda site: site.row)
    yield ordered[0]
    for duplicate in ordered[1:]:
        inc_counter(NAMESPACE, "duplicate_rows")
        yield beam.pvalue.TaggedOutput("failed", failure(
            "index", key, f"index line {duplicate.row + 2} duplicates line {ordered[0].row + 2} "
                          f"(site {key}); the first line is used"))


@dataclass
class ReadSites(beam.PTransform):
    """The sites of ``index_path``, once each, plus a ``failed`` PCollection of bad rows."""

    index_path: str
    channels: tuple[str, ...]

    def __post_init__(self):
        super().__init__()

    def expand(self, pbegin) -> dict:
        listed = (
            pbegin
            | "IndexFile" >> beam.Create([self.index_path])
            | "StreamIndex" >> beam.ParDo(StreamIndex(tuple(self.channels))).with_outputs("failed", main="sites")
        )
        unique = (
            listed.sites
            | "KeyBySite" >> beam.Map(lambda site: (site.key, site))
            | "GroupBySite" >> beam.GroupByKey()
            | "FirstRowPerSite" >> beam.ParDo(first_row_per_site).with_outputs("failed", main="sites")
        )
        failed = (listed.failed, unique.failed) | "IndexFailures" >> beam.Flatten()
        return {"sites": unique.sites, "failed": failed}
