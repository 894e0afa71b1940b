"""``dpbeam validate``: check a project without running anything.

Loads the index and looks at every file it names -- image headers (existence,
format, size against ``dataset.images``) and locations files (readable, the
right columns, numeric centres) -- and collects every problem, each naming the
config key, index line or file. Reading only headers keeps this cheap enough to
run before every large job.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from dpcore.config import Config, ConfigError
from dpcore.images import ImageReadError, image_shape
from dpcore.layout import ProjectLayout, UnsafePathError
from dpcore.locations import LocationsError, read_locations
from dpcore.metadata import (MetadataError, Site, check_columns, read_index, required_columns,
                             sites_from_index, summarise)

logger = logging.getLogger(__name__)

_IO_THREADS = 16


@dataclass
class ValidationReport:
    counts: dict[str, int] = field(default_factory=dict)
    channels: tuple[str, ...] = ()
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    readiness: list[str] = field(default_factory=list)  # the "config ready for: ..." verdict

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        c = self.counts
        lines = [
            f"plates: {c.get('plates', 0)}  wells: {c.get('wells', 0)}  sites: {c.get('sites', 0)}  "
            f"images: {c.get('images', 0)}",
            f"channels: {', '.join(self.channels) or '-'}",
            f"cells found: {c.get('cells', 0)} in {c.get('sites_with_locations', 0)} location file(s)",
        ]
        lines += [f"note: {n}" for n in self.notes]
        lines += self.readiness
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("no problems found")
        return lines


def _check_image(layout: ProjectLayout, site: Site, channel: str, relative: str,
                 expected: tuple[int, int]) -> str | None:
    where = f"site {site.key} (index line {site.row + 2}), channel {channel}"
    try:
        path = layout.image_file(relative)
    except UnsafePathError as error:
        return f"{where}: {error}"
    try:
        shape = image_shape(path)
    except ImageReadError as error:
        return f"{where}: {error}"
    if shape != expected:
        return (f"{where}: {path} is {shape[1]}x{shape[0]} (width x height), dataset.images says "
                f"{expected[1]}x{expected[0]}")
    return None


def _count_cells(layout: ProjectLayout, site: Site) -> tuple[int | None, str | None]:
    try:
        return len(read_locations(layout.locations_file(site.plate, site.well, site.site))), None
    except (LocationsError, UnsafePathError) as error:  # LocationsMissing included: no file is a problem here
        return None, f"site {site.key}: {error}"


def validate_project(layout: ProjectLayout, config: Config,
                     commands: tuple[str, ...] = ("prepare", "export-sc")) -> ValidationReport:
    """Check the index, every image header and every locations file; ``commands`` name the commands whose
    index columns must be present."""
    report = ValidationReport(channels=config.channels)
    try:
        config.require("validate")
    except ConfigError as error:
        report.problems += error.problems
        return report

    index_path = layout.index_file
    try:
        frame = read_index(index_path)
    except MetadataError as error:
        report.problems.append(str(error))
        return report
    try:
        sites = sites_from_index(frame, config.channels, str(index_path), config.dataset.images.file_format)
    except MetadataError as error:
        report.problems.append(str(error))
        return report
    for command in commands:
        try:
            check_columns(frame, required_columns(config, command), str(index_path))
        except MetadataError as error:
            if str(error) not in report.problems:
                report.problems.append(str(error))
    report.counts.update(summarise(sites))
    report.counts["images"] = len(sites) * len(config.channels)
    _check_partition_values(frame, config, report)

    expected = (config.dataset.images.height, config.dataset.images.width)
    with ThreadPoolExecutor(_IO_THREADS) as pool:
        image_jobs = [pool.submit(_check_image, layout, site, channel, relative, expected)
                      for site in sites for channel, relative in zip(config.channels, site.channel_files)]
        single_cells = config.dataset.locations.mode == "single_cells"
        cell_jobs = [pool.submit(_count_cells, layout, site) for site in sites] if single_cells else []
        report.problems += [p for p in (job.result() for job in image_jobs) if p]
        cells = with_locations = 0
        for job in cell_jobs:
            count, problem = job.result()
            if problem:
                report.problems.append(problem)
            else:
                cells += count or 0
                with_locations += 1
    report.counts["cells"] = cells
    report.counts["sites_with_locations"] = with_locations
    if not single_cells:
        report.notes.append("dataset.locations.mode is full_image: locations files are not used")
    elif with_locations < len(sites):
        report.notes.append(f"{len(sites) - with_locations} site(s) without a usable locations file: `dpbeam locate` "
                            f"finds the nuclei (or imports CellProfiler's with --from-cellprofiler)")
    return report


def _check_partition_values(frame, config: Config, report: ValidationReport) -> None:
    partition = config.train.partition
    if not partition.split_field or partition.split_field not in frame.columns:
        return
    present = set(frame[partition.split_field].astype(str))
    for key, values in (("training", partition.training), ("validation", partition.validation)):
        for value in values or ():
            if value not in present:
                report.problems.append(
                    f"train.partition.{key} value {value!r} matches no row of column {partition.split_field!r}")
    if partition.label_field and partition.label_field in frame.columns:
        labels = frame[partition.label_field].astype(str)
        report.counts["labels"] = labels.nunique()
        report.notes.append(f"{labels.nunique()} label(s) in {partition.label_field}: "
                            + ", ".join(sorted(labels.unique())[:10]))
