"""The metadata index (``inputs/metadata/index.csv``): one row per site.

Every column is read as a string and nothing is converted to NA, as in
DeepProfiler, so plate "0001" stays "0001" and a treatment called "NA" stays
"NA". Rows become small frozen :class:`Site` records that travel through the
pipelines and group deterministically.
"""

from __future__ import annotations

import heapq
import io
import logging
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import pandas as pd

from dpcore.config import Config
from dpcore.storage import StoragePath, as_storage_path

logger = logging.getLogger(__name__)

PLATE, WELL, SITE = "Metadata_Plate", "Metadata_Well", "Metadata_Site"
SITE_COLUMNS = (PLATE, WELL, SITE)


class MetadataError(ValueError):
    """The index cannot be used; the message names the file, columns or rows."""


@dataclass(frozen=True)
class Site:
    """One imaged site: its keys, its channel image paths and its index row."""

    plate: str
    well: str
    site: str
    # Image paths exactly as written in the index, in the config's channel order.
    channel_files: tuple[str, ...]
    # Every (column, value) of the index row, in index column order.
    metadata: tuple[tuple[str, str], ...]
    # 0-based data row in the index (file line = row + 2, counting the header).
    row: int = 0
    # 0-based position among the index's rows of the same group, in index order, where a pipeline asked
    # for one (beam_pipelines.index.ReadSites' number_by: export-sc deals each split's sites to shards by it).
    ordinal: int = 0

    @property
    def key(self) -> str:
        """DeepProfiler's site key, ``plate/well-site``."""
        return f"{self.plate}/{self.well}-{self.site}"

    def value(self, column: str) -> str:
        for name, value in self.metadata:
            if name == column:
                return value
        raise KeyError(f"column {column!r} is not in the index row of site {self.key}")

    def as_dict(self) -> dict[str, str]:
        return dict(self.metadata)


def required_columns(config: Config, command: str) -> tuple[str, ...]:
    """The index columns ``command`` needs under ``config``."""
    columns = list(SITE_COLUMNS) + list(config.channels)
    partition = config.train.partition
    if command in ("export-sc", "train"):
        if partition.label_field:
            columns.append(partition.label_field)
        if partition.split_field:
            columns.append(partition.split_field)
    label = config.dataset.metadata.label_field
    if command == "prepare" and label and config.dataset.metadata.control_value is not None:
        columns.append(label)
    return tuple(dict.fromkeys(columns))


def read_index(path: "StoragePath | str") -> pd.DataFrame:
    """Read the index with every cell as a string (no NA conversion)."""
    path = as_storage_path(path)
    if not path.is_file():
        raise MetadataError(f"index file {path} does not exist")
    try:
        frame = pd.read_csv(io.BytesIO(path.read_bytes()), dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise MetadataError(f"index file {path} cannot be parsed as CSV: {error}") from error
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.astype(object)


def iter_index_chunks(path: "StoragePath | str", chunk_rows: int = 50_000) -> Iterator[pd.DataFrame]:
    """The index in chunks of ``chunk_rows`` rows, read as it streams in.

    An index of millions of sites is never held whole: readers on the launcher
    and on workers keep one chunk at a time. Cells are strings, as in
    :func:`read_index`.
    """
    path = as_storage_path(path)
    if not path.is_file():
        raise MetadataError(f"index file {path} does not exist")
    try:
        with path.open("rb") as handle:
            reader = pd.read_csv(handle, dtype=str, keep_default_na=False, na_filter=False, chunksize=chunk_rows)
            for chunk in reader:
                chunk.columns = [str(c).strip() for c in chunk.columns]
                yield chunk.astype(object)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise MetadataError(f"index file {path} cannot be parsed as CSV: {error}") from error


def check_columns(frame: pd.DataFrame, required: Iterable[str], source: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise MetadataError(
            f"index {source} lacks required column(s) {', '.join(missing)}; "
            f"it has {', '.join(frame.columns) or 'no columns'}")


# dataset.images.file_format: the image file extensions each value stands for (DeepProfiler's "tif" reads
# ".tiff" files too; it named compressed PNGs by replacing ".<file_format>" in the path, which a file of
# another type silently escapes).
FILE_EXTENSIONS = {"tif": (".tif", ".tiff"), "tiff": (".tif", ".tiff"), "png": (".png",)}


def _row_to_site(columns: list[str], values: tuple, channels: Sequence[str], row_number: int,
                 file_format: str | None = None) -> tuple[Site | None, str | None]:
    """(Site, None) for a usable row, (None, problem) for one with blank keys or image paths, or (with
    ``file_format``) an image whose file name is not of that format."""
    row = dict(zip(columns, values))
    blank = [c for c in list(SITE_COLUMNS) + list(channels) if not str(row[c]).strip()]
    if blank:
        return None, f"line {row_number + 2}: empty value in column(s) {', '.join(blank)}"
    if file_format is not None:
        extensions = FILE_EXTENSIONS[file_format]
        other = [c for c in channels if not str(row[c]).strip().lower().endswith(extensions)]
        if other:
            return None, (f"line {row_number + 2}: {other[0]} image {str(row[other[0]]).strip()!r} is not a "
                          f"{'/'.join(e[1:] for e in extensions)} file (dataset.images.file_format "
                          f"{file_format!r})")
    return Site(
        plate=row[PLATE].strip(), well=row[WELL].strip(), site=row[SITE].strip(),
        channel_files=tuple(str(row[c]).strip() for c in channels),
        metadata=tuple((c, str(row[c])) for c in columns),
        row=row_number,
    ), None


def iter_sites(path: "StoragePath | str", channels: Sequence[str],
               on_problem: Callable[[str], None] | None = None, chunk_rows: int = 50_000) -> Iterator[Site]:
    """Every usable site of the index, streamed chunk by chunk (memory: one chunk).

    Rows with blank keys or image paths are passed to ``on_problem`` (or raise
    :class:`MetadataError` when it is None). Duplicate sites are *not* detected
    here -- that needs every key at once; pipelines find them by grouping on the
    site key (``beam_pipelines.index.ReadSites``) and :func:`sites_from_index`
    finds them for ``validate``.
    """
    path = as_storage_path(path)
    row_number = 0
    for chunk in iter_index_chunks(path, chunk_rows):
        check_columns(chunk, list(SITE_COLUMNS) + list(channels), str(path))
        columns = list(chunk.columns)
        for values in chunk.itertuples(index=False, name=None):
            site, problem = _row_to_site(columns, values, channels, row_number)
            row_number += 1
            if site is not None:
                yield site
            elif on_problem is None:
                raise MetadataError(f"index {path}: {problem}")
            else:
                on_problem(problem)


@dataclass
class IndexScan:
    """What a launcher needs to know about an index, gathered in one streaming pass.

    Memory is independent of the number of sites: counts, the distinct values of
    a few named columns (plates, labels, splits: as many as the screen has
    treatments, not sites) and a fixed-size deterministic sample of sites.
    """

    source: str
    sites: int = 0
    plates: set[str] = field(default_factory=set)
    values: dict[str, dict[str, int]] = field(default_factory=dict)  # column -> value -> sites
    sample: list[tuple[int, int, Site]] = field(default_factory=list)  # heap of (-hash, row, site)
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0

    def sites_on(self, plates: Iterable[str]) -> int:
        """How many of the index's sites lie on ``plates`` (the scan must count ``Metadata_Plate``)."""
        per_plate = self.values["Metadata_Plate"]
        return sum(per_plate.get(plate, 0) for plate in plates)

    def sampled_sites(self) -> list[Site]:
        """The sampled sites (those with the smallest key hashes), in index order."""
        return [site for _, _, site in sorted(self.sample, key=lambda entry: entry[2].row)]


def scan_index(path: "StoragePath | str", config: Config, command: str, sample_size: int = 64,
               count_columns: Sequence[str] = (), chunk_rows: int = 50_000) -> IndexScan:
    """Check the index for ``command`` and summarise it without holding it whole.

    Missing columns and blank cells are refused (:class:`MetadataError`) with the
    line numbers; duplicates are left to the pipelines (see :func:`iter_sites`).
    ``count_columns`` lists columns whose values are counted (labels, splits).
    """
    path = as_storage_path(path)
    scan = IndexScan(source=str(path), values={column: {} for column in count_columns})
    required = required_columns(config, command)

    def problem(text: str) -> None:
        scan.problem_count += 1
        if len(scan.problems) < 20:
            scan.problems.append(text)

    checked = False
    for chunk in iter_index_chunks(path, chunk_rows):
        if not checked:
            check_columns(chunk, required, str(path))
            checked = True
        columns = list(chunk.columns)
        for values in chunk.itertuples(index=False, name=None):
            site, text = _row_to_site(columns, values, config.channels, scan.sites + scan.problem_count,
                                      config.dataset.images.file_format)
            if site is None:
                problem(text)
                continue
            scan.sites += 1
            scan.plates.add(site.plate)
            row = dict(zip(columns, values))
            for column, counts in scan.values.items():
                counts[row[column]] = counts.get(row[column], 0) + 1
            # Keep the sample_size sites with the smallest key hash: the same sample on every run.
            entry = (-zlib.crc32(site.key.encode("utf-8")), site.row, site)
            if len(scan.sample) < sample_size:
                heapq.heappush(scan.sample, entry)
            elif entry[:2] > scan.sample[0][:2]:
                heapq.heapreplace(scan.sample, entry)
    if scan.problem_count:
        more = f"\n  ... and {scan.problem_count - 20} more" if scan.problem_count > 20 else ""
        raise MetadataError(f"index {path} has {scan.problem_count} bad row(s):\n  " + "\n  ".join(scan.problems)
                            + more)
    if not scan.sites:
        raise MetadataError(f"index {path} has no rows")
    return scan


def sites_from_index(frame: pd.DataFrame, channels: Sequence[str], source: str,
                     file_format: str | None = None) -> list[Site]:
    """Turn index rows into :class:`Site` records, refusing blank keys, duplicates and (with
    ``file_format``) images of another format."""
    check_columns(frame, list(SITE_COLUMNS) + list(channels), source)
    problems: list[str] = []
    seen: dict[tuple[str, str, str], int] = {}
    sites: list[Site] = []
    columns = list(frame.columns)
    for row_number, values in enumerate(frame.itertuples(index=False, name=None)):
        site, problem = _row_to_site(columns, values, channels, row_number, file_format)
        if site is None:
            problems.append(problem)
            continue
        key = (site.plate, site.well, site.site)
        if key in seen:
            problems.append(f"line {row_number + 2}: site {site.key} duplicates line {seen[key]}")
            continue
        seen[key] = row_number + 2
        sites.append(site)
    if problems:
        shown = problems[:20]
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise MetadataError(f"index {source} has {len(problems)} bad row(s):\n  " + "\n  ".join(shown) + more)
    if not sites:
        raise MetadataError(f"index {source} has no rows")
    return sites


def load_sites(path: "StoragePath | str", config: Config, command: str) -> list[Site]:
    """Read, check and convert the index for ``command`` in one step."""
    path = as_storage_path(path)
    frame = read_index(path)
    check_columns(frame, required_columns(config, command), str(path))
    return sites_from_index(frame, config.channels, str(path), config.dataset.images.file_format)


def summarise(sites: Sequence[Site]) -> dict[str, int]:
    return {
        "plates": len({s.plate for s in sites}),
        "wells": len({(s.plate, s.well) for s in sites}),
        "sites": len(sites),
    }
