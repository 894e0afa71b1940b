"""The metadata index (``inputs/metadata/index.csv``): one row per site.

Every column is read as a string and nothing is converted to NA, as in
DeepProfiler, so plate "0001" stays "0001" and a treatment called "NA" stays
"NA". Rows become small frozen :class:`Site` records that travel through the
pipelines and group deterministically.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Iterable, Sequence

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


def check_columns(frame: pd.DataFrame, required: Iterable[str], source: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise MetadataError(
            f"index {source} lacks required column(s) {', '.join(missing)}; "
            f"it has {', '.join(frame.columns) or 'no columns'}")


def sites_from_index(frame: pd.DataFrame, channels: Sequence[str], source: str) -> list[Site]:
    """Turn index rows into :class:`Site` records, refusing blank keys and duplicates."""
    check_columns(frame, list(SITE_COLUMNS) + list(channels), source)
    problems: list[str] = []
    seen: dict[tuple[str, str, str], int] = {}
    sites: list[Site] = []
    columns = list(frame.columns)
    for row_number, values in enumerate(frame.itertuples(index=False, name=None)):
        row = dict(zip(columns, values))
        line = row_number + 2
        blank = [c for c in list(SITE_COLUMNS) + list(channels) if not str(row[c]).strip()]
        if blank:
            problems.append(f"line {line}: empty value in column(s) {', '.join(blank)}")
            continue
        key = (row[PLATE].strip(), row[WELL].strip(), row[SITE].strip())
        if key in seen:
            problems.append(f"line {line}: site {key[0]}/{key[1]}-{key[2]} duplicates line {seen[key]}")
            continue
        seen[key] = line
        sites.append(Site(
            plate=key[0], well=key[1], site=key[2],
            channel_files=tuple(str(row[c]).strip() for c in channels),
            metadata=tuple((c, str(row[c])) for c in columns),
            row=row_number,
        ))
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
    return sites_from_index(frame, config.channels, str(path))


def read_sites(path: "StoragePath | str", channels: Sequence[str]) -> list[Site]:
    """The index's sites, read where it is called: pipelines call it on a worker, so an index
    of millions of sites never travels in the job graph."""
    return sites_from_index(read_index(path), channels, str(path))


def summarise(sites: Sequence[Site]) -> dict[str, int]:
    return {
        "plates": len({s.plate for s in sites}),
        "wells": len({(s.plate, s.well) for s in sites}),
        "sites": len(sites),
    }
