"""CellProfiler LoadData CSVs -> DeepProfiler's index: what ``dpbeam import-loaddata`` writes.

The Cell Painting Gallery describes every plate with CellProfiler LoadData CSVs: one row per site,
``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``, and per channel ``PathName_Orig<Ch>`` (a
folder, often ``s3://...``) and ``FileName_Orig<Ch>``; ``load_data_with_illum.csv`` adds
``PathName_Illum<Ch>``/``FileName_Illum<Ch>`` naming the plate's CellProfiler illumination function
(a ``.npy``). This module turns such rows into index rows:

- ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site`` and the CSV's other ``Metadata_*`` columns;
- one column per config channel holding the image's full URL (or local path): PathName + FileName;
- ``Illum_<channel>`` with the illumination function's URL, when the CSV names one;
- columns joined from platemap CSVs (``--platemap CSV --join COLUMN...``, left to right, e.g. JUMP's
  ``well.csv`` on plate and well, then ``compound.csv`` on ``Metadata_JCP2022``).

A row with a missing image name or without a match in a platemap is reported with its CSV and line
number and left out; nothing is dropped silently. Pure pandas: no TensorFlow, no Beam.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd

from dpcore.storage import StoragePath

logger = logging.getLogger(__name__)

KEY_COLUMNS = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")
ILLUMINATION_PREFIX = "Illum_"
LINE = "_line"  # where a row came from ("<csv>:<line>"), kept until the index is written


class LoadDataError(ValueError):
    """A LoadData CSV or platemap cannot be used at all; the message names the file and what is wrong."""


def illumination_column(channel: str) -> str:
    """The index column holding ``channel``'s CellProfiler illumination function (``Illum_DNA``)."""
    return f"{ILLUMINATION_PREFIX}{channel}"


@dataclass(frozen=True)
class Platemap:
    """A CSV of per-plate/well/compound annotations and the columns it is joined on."""

    source: str
    frame: pd.DataFrame
    join: tuple[str, ...]

    def __post_init__(self) -> None:
        missing = [c for c in self.join if c not in self.frame.columns]
        if missing:
            raise LoadDataError(f"{self.source}: no column {', '.join(missing)} to join on "
                                f"(it has {', '.join(map(str, self.frame.columns))})")
        duplicated = self.frame.duplicated(list(self.join))
        if duplicated.any():
            first = self.frame[duplicated].iloc[0]
            raise LoadDataError(f"{self.source}: {int(duplicated.sum())} row(s) repeat a join key, e.g. "
                                f"{dict(first[list(self.join)])}: a site would match several rows")


@dataclass
class ImportResult:
    index: pd.DataFrame
    rejected: list[dict] = field(default_factory=list)   # {"item": "<csv>:<line>", "reason": ...}
    rows_read: int = 0


def image_names(channels: Sequence[str], names: dict[str, str] | None = None) -> dict[str, str]:
    """LoadData image name per config channel: ``Orig<channel>`` unless ``names`` says otherwise."""
    names = dict(names or {})
    unknown = sorted(set(names) - set(channels))
    if unknown:
        raise LoadDataError(f"--image-name for {', '.join(unknown)}: not a channel of the config "
                            f"({', '.join(channels)})")
    return {channel: names.get(channel, f"Orig{channel}") for channel in channels}


def _join_url(folder: str, name: str) -> str:
    folder = folder.strip()
    if not folder:
        return name.strip()
    return folder.rstrip("/") + "/" + name.strip() if "://" in folder else posixpath.join(folder, name.strip())


def _illumination_name(image_name: str, channel: str) -> str:
    """CellProfiler's convention: ``OrigDNA`` -> ``IllumDNA`` (else ``Illum<channel>``)."""
    return "Illum" + image_name[len("Orig"):] if image_name.startswith("Orig") else f"Illum{channel}"


def _text(value) -> str:
    return "" if pd.isna(value) else str(value)


def convert(frame: pd.DataFrame, source: str, channels: Sequence[str], names: dict[str, str],
            first_line: int = 2) -> ImportResult:
    """Index rows of one LoadData CSV (``first_line``: the CSV line of ``frame``'s first row)."""
    missing = [c for c in KEY_COLUMNS if c not in frame.columns]
    needed = [f"{kind}_{names[ch]}" for ch in channels for kind in ("PathName", "FileName")]
    missing += [c for c in needed if c not in frame.columns]
    if missing:
        raise LoadDataError(f"{source}: no column {', '.join(missing)} (a CellProfiler LoadData CSV has "
                            f"Metadata_Plate/Well/Site and PathName_/FileName_<image name> per channel; "
                            f"--image-name CHANNEL=NAME maps a channel to another image name)")
    illum = {ch: _illumination_name(names[ch], ch) for ch in channels}
    has_illum = {ch: f"FileName_{illum[ch]}" in frame.columns and f"PathName_{illum[ch]}" in frame.columns
                 for ch in channels}
    extra = [c for c in frame.columns if c.startswith("Metadata_") and c not in KEY_COLUMNS]
    rows, rejected = [], []
    for number, record in enumerate(frame.itertuples(index=False), start=first_line):
        values = dict(zip(frame.columns, record))
        problems = [f"no {key}" for key in KEY_COLUMNS if not _text(values[key]).strip()]
        row = {key: _text(values[key]).strip() for key in KEY_COLUMNS}
        row[LINE] = f"{source}:{number}"
        for column in extra:
            row[column] = values[column]
        for channel in channels:
            file_name = _text(values[f"FileName_{names[channel]}"])
            if not file_name.strip():
                problems.append(f"no FileName_{names[channel]} (channel {channel})")
                continue
            row[channel] = _join_url(_text(values[f"PathName_{names[channel]}"]), file_name)
            if has_illum[channel]:
                function = _text(values[f"FileName_{illum[channel]}"])
                if function.strip():
                    row[illumination_column(channel)] = _join_url(_text(values[f"PathName_{illum[channel]}"]),
                                                                  function)
        if problems:
            rejected.append({"item": f"{source}:{number}", "reason": "; ".join(problems)})
        else:
            rows.append(row)
    index = pd.DataFrame(rows, columns=list(KEY_COLUMNS) + extra + list(channels)
                         + [illumination_column(ch) for ch in channels if has_illum[ch]] + [LINE])
    return ImportResult(index=index, rejected=rejected, rows_read=len(frame))


def join_platemaps(index: pd.DataFrame, platemaps: Sequence[Platemap]) -> tuple[pd.DataFrame, list[dict]]:
    """Left-join each platemap in turn; rows without a match are rejected (by their CSV line)."""
    rejected: list[dict] = []
    for platemap in platemaps:
        missing = [c for c in platemap.join if c not in index.columns]
        if missing:
            present = ", ".join(c for c in index.columns if c != LINE)
            raise LoadDataError(f"--join {' '.join(platemap.join)} for {platemap.source}: the rows have no "
                                f"column {', '.join(missing)} (they have {present})")
        left = index.copy()
        right = platemap.frame.copy()
        for column in platemap.join:  # plate "1" and plate 1 are the same plate
            left[column] = left[column].map(_text).str.strip()
            right[column] = right[column].map(_text).str.strip()
        overlap = [c for c in right.columns if c in left.columns and c not in platemap.join]
        right = right.drop(columns=overlap)  # the LoadData CSV's own values win
        merged = left.merge(right, on=list(platemap.join), how="left", indicator=True)
        unmatched = merged["_merge"] == "left_only"
        for line, values in zip(merged.loc[unmatched, LINE], merged.loc[unmatched, list(platemap.join)].values):
            rejected.append({"item": line, "reason": f"no row of {platemap.source} with "
                                                     + ", ".join(f"{c}={v}" for c, v in zip(platemap.join, values))})
        index = merged[~unmatched].drop(columns="_merge").reset_index(drop=True)
    return index, rejected


# ------------------------------------------------------------------ the command
def read_csv(path: StoragePath) -> pd.DataFrame:
    """A CSV, local or in a bucket, every value as text (plate "0012" stays "0012")."""
    try:
        with path.open("rb") as handle:
            return pd.read_csv(handle, dtype=str, keep_default_na=False)
    except FileNotFoundError as error:
        raise LoadDataError(f"{path}: file not found") from error
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise LoadDataError(f"{path}: not a readable CSV ({error})") from error


def parse_image_names(values: Sequence[str]) -> dict[str, str]:
    """``--image-name DNA=OrigHoechst`` values as {channel: LoadData image name}."""
    names = {}
    for value in values:
        channel, _, name = value.partition("=")
        if not channel.strip() or not name.strip():
            raise LoadDataError(f"--image-name {value!r}: expected CHANNEL=NAME, e.g. DNA=OrigDNA")
        names[channel.strip()] = name.strip()
    return names


def import_loaddata(csvs: Sequence[StoragePath], channels: Sequence[str], names: dict[str, str],
                    platemaps: Sequence[Platemap], required: Sequence[str] = ()) -> ImportResult:
    """Every CSV's rows as one index (sorted by plate, well, site), with the rejected rows.

    ``required``: columns the config needs in the index (its label field); a missing one is an error
    that names the platemap option that would bring it.
    """
    names = image_names(channels, names)
    parts, rejected, read = [], [], 0
    for path in csvs:
        result = convert(read_csv(path), str(path), channels, names)
        logger.info("%s: %d row(s), %d rejected", path, result.rows_read, len(result.rejected))
        parts.append(result.index)
        rejected += result.rejected
        read += result.rows_read
    index = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(KEY_COLUMNS))
    duplicated = index.duplicated(list(KEY_COLUMNS), keep="first")
    for line, key in zip(index.loc[duplicated, LINE], index.loc[duplicated, list(KEY_COLUMNS)].values):
        rejected.append({"item": line, "reason": f"site {'/'.join(key)} already came from an earlier row"})
    index = index[~duplicated]
    index, unmatched = join_platemaps(index, platemaps)
    rejected += unmatched
    missing = [column for column in required if column not in index.columns]
    if missing:
        raise LoadDataError(f"the index would have no column {', '.join(missing)}, which the config's "
                            f"dataset.metadata.label_field names: join it from a platemap "
                            f"(--platemap CSV --join COLUMN ...)")
    index = index.sort_values(list(KEY_COLUMNS), kind="stable").drop(columns=LINE).reset_index(drop=True)
    return ImportResult(index=index, rejected=sorted(rejected, key=lambda r: r["item"]), rows_read=read)
