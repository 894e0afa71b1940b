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
from dataclasses import dataclass, replace
from typing import Callable, Hashable, Iterator

import apache_beam as beam

from dpcore.metadata import MetadataError, Site, iter_sites

from beam_pipelines.dead_letter import failure
from beam_pipelines.process_exit import skip_final_collection
from beam_pipelines.progress import inc_counter

logger = logging.getLogger(__name__)

NAMESPACE = "dpbeam.index"


class StreamIndex(beam.DoFn):
    """Index file -> its sites, one chunk of rows in memory at a time.

    With ``number_by``, each site's ``ordinal`` is its position among the rows of its group
    (``number_by(site)``) so far: the index is read in order by one worker, so this is where positions
    are known without holding any list of sites (a counter per group).
    """

    def __init__(self, channels: tuple[str, ...], number_by: Callable[[Site], Hashable] | None = None):
        self.channels = channels
        self.number_by = number_by

    def setup(self) -> None:
        skip_final_collection()

    def process(self, index_path: str) -> Iterator:
        problems: list[str] = []
        counters: dict[Hashable, int] = {}
        try:
            for site in iter_sites(index_path, self.channels, on_problem=problems.append):
                inc_counter(NAMESPACE, "sites_listed")
                if self.number_by is not None:
                    group = self.number_by(site)
                    site = replace(site, ordinal=counters.get(group, 0))
                    counters[group] = site.ordinal + 1
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
    number_by: Callable[[Site], Hashable] | None = None  # sets each site's ordinal (StreamIndex)

    def __post_init__(self):
        super().__init__()

    def expand(self, pbegin) -> dict:
        listed = (
            pbegin
            | "IndexFile" >> beam.Create([self.index_path])
            | "StreamIndex" >> beam.ParDo(StreamIndex(tuple(self.channels), self.number_by)
                                          ).with_outputs("failed", main="sites")
        )
        unique = (
            listed.sites
            | "KeyBySite" >> beam.Map(lambda site: (site.key, site))
            | "GroupBySite" >> beam.GroupByKey()
            | "FirstRowPerSite" >> beam.ParDo(first_row_per_site).with_outputs("failed", main="sites")
        )
        failed = (listed.failed, unique.failed) | "IndexFailures" >> beam.Flatten()
        return {"sites": unique.sites, "failed": failed}
