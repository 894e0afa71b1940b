"""``dpbeam split --parts N``: DeepProfiler's index partitions.

Beam parallelises on its own, so splitting is no longer needed for speed; the
command stays for users' scripts that run ``profile --part K`` on separate
machines. As in DeepProfiler, a well is never divided between parts. Unlike
DeepProfiler (which put every remaining well in the last part), wells are
spread so part sizes differ by at most one well.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from dpcore.layout import ProjectLayout
from dpcore.metadata import PLATE, WELL, check_columns, read_index
from dpcore.storage import StoragePath

logger = logging.getLogger(__name__)


class SplitPart(NamedTuple):
    path: StoragePath
    sites: int
    wells: int


def split_index(layout: ProjectLayout, parts: int) -> list[SplitPart]:
    """Write ``index-000.csv`` ... beside the index; return what each file holds."""
    if parts < 1:
        raise ValueError(f"--parts must be a positive integer, got {parts}")
    frame = read_index(layout.index_file)
    check_columns(frame, (PLATE, WELL), str(layout.index_file))
    wells = frame[[PLATE, WELL]].drop_duplicates().reset_index(drop=True)
    if parts > len(wells):
        raise ValueError(f"--parts {parts} exceeds the number of wells ({len(wells)}) in {layout.index_file}")
    written = []
    for part, chunk in enumerate(np.array_split(np.arange(len(wells)), parts)):
        selected = wells.iloc[chunk]
        rows = frame.merge(selected, on=[PLATE, WELL], how="inner")
        target = layout.split_index_file(part)
        target.write_text(rows.to_csv(index=False, lineterminator="\n"))
        logger.debug("wrote %s (%d sites, %d wells)", target, len(rows), len(selected))
        written.append(SplitPart(target, len(rows), len(selected)))
    return written
