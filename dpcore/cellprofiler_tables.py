"""CellProfiler's object and image tables, streamed: the source of ``locate --from-cellprofiler``.

CellProfiler writes one row per object (``Nuclei.csv`` from ExportToSpreadsheet, ``Per_Nuclei`` in an
ExportToDatabase SQLite file as the Cell Painting Gallery ships them, or Parquet converted from either)
and one row per image (``Image.csv`` / ``Per_Image``). An object names its image by ``ImageNumber``
(and ``TableNumber`` where the tables were merged by cytominer-database); the image row names the site,
by ``Metadata_Plate/Well/Site`` or by its file name. Columns may carry the table's prefix
(``Nuclei_Location_Center_X``, ``Image_Metadata_Well``): :func:`find_column` accepts both.

A plate's object table runs to millions of rows and hundreds of columns: only the needed columns are
read, in chunks of :data:`CHUNK_ROWS`, and each chunk is handed on per image, so nothing holds a table.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from dpcore.storage import StoragePath, as_storage_path

logger = logging.getLogger(__name__)

CHUNK_ROWS = 100_000
IMAGE_KEY_COLUMNS = ("TableNumber", "ImageNumber")
SITE_FIELDS = ("Plate", "Well", "Site")
FORMATS = ("csv", "sqlite", "parquet")


class TableError(ValueError):
    """A CellProfiler table cannot be used; the message names the file and what is missing."""


@dataclass(frozen=True)
class TableSource:
    """One table: a CSV or Parquet file, or a table inside a SQLite file."""

    url: str
    format: str
    table: str | None = None  # SQLite only

    def __str__(self) -> str:
        return f"{self.url} (table {self.table})" if self.table else self.url


@dataclass(frozen=True)
class ObjectColumns:
    """Where an object table keeps what locate needs."""

    image_keys: tuple[str, ...]  # e.g. ("ImageNumber",) or ("TableNumber", "ImageNumber")
    object_number: str | None
    x: str
    y: str


@dataclass(frozen=True)
class ImageColumns:
    image_keys: tuple[str, ...]
    site: tuple[str, str, str] | None  # plate, well, site columns (matching by metadata)
    file_name: str | None  # FileName_<image> column (matching by file name)


def table_format(url: str) -> str:
    lowered = url.lower()
    if lowered.endswith((".sqlite", ".sqlite3", ".db")):
        return "sqlite"
    if lowered.endswith((".parquet", ".pq")):
        return "parquet"
    if lowered.endswith((".csv", ".csv.gz", ".txt")):
        return "csv"
    raise TableError(f"{url}: cannot tell the table's format from its name (expected .csv, .sqlite/.db or .parquet)")


def object_source(url: str, object_name: str) -> TableSource:
    kind = table_format(url)
    return TableSource(url, kind, f"Per_{object_name}" if kind == "sqlite" else None)


def image_source(objects: TableSource, image_table: str | None) -> TableSource:
    """The image table named by the user, or the one beside the objects (``Image.csv``, ``Per_Image``)."""
    if image_table:
        kind = table_format(image_table)
        return TableSource(image_table, kind, "Per_Image" if kind == "sqlite" else None)
    if objects.format == "sqlite":
        return TableSource(objects.url, "sqlite", "Per_Image")
    sibling = as_storage_path(objects.url).parent / f"Image.{'csv' if objects.format == 'csv' else 'parquet'}"
    return TableSource(str(sibling), objects.format)


# ------------------------------------------------------------------ columns
def table_columns(source: TableSource) -> list[str]:
    """The column names of a table (reads the header only)."""
    path = as_storage_path(source.url)
    if not path.exists():
        raise TableError(f"{source}: file not found")
    if source.format == "csv":
        with path.open("rb") as handle:
            return list(pd.read_csv(handle, nrows=0, compression="infer" if path.is_local else _compression(path)))
    if source.format == "parquet":
        with path.open("rb") as handle:
            return list(pq.ParquetFile(handle).schema_arrow.names)
    with _sqlite(path) as connection:
        table = _sqlite_table(connection, source)
        return [row[1] for row in connection.execute(f"PRAGMA table_info({_quoted(table)})")]


def find_column(columns: Sequence[str], names: Sequence[str], prefixes: Sequence[str] = ()) -> str | None:
    """The first of ``names`` present, bare or with one of ``prefixes`` (``Nuclei_``, ``Image_``)."""
    present = set(columns)
    for name in names:
        for candidate in (name, *(f"{prefix}_{name}" for prefix in prefixes)):
            if candidate in present:
                return candidate
    return None


def object_columns(source: TableSource, columns: Sequence[str], object_name: str, image_keys: tuple[str, ...],
                   x: str | None = None, y: str | None = None) -> ObjectColumns:
    def pick(given: str | None, axis: str) -> str:
        if given:
            if given not in columns:
                raise TableError(f"{source}: no column {given!r} (given for the nucleus {axis})")
            return given
        found = find_column(columns, (f"Location_Center_{axis}", f"AreaShape_Center_{axis}"), (object_name,))
        if found is None:
            raise TableError(f"{source}: no Location_Center_{axis} column (nor {object_name}_Location_Center_{axis}, "
                             f"AreaShape_Center_{axis}); name it with --{axis.lower()}-column")
        return found

    number = find_column(columns, ("ObjectNumber", "Number_Object_Number"), (object_name,))
    return ObjectColumns(image_keys, number, pick(x, "X"), pick(y, "Y"))


def shared_image_keys(object_columns_: Sequence[str], image_columns_: Sequence[str], source: TableSource,
                      given: Sequence[str] = ()) -> tuple:
    """How objects name their image: ``given`` columns, else ``ImageNumber`` (and ``TableNumber`` when both
    tables have it)."""
    if given:
        missing = [key for key in given if key not in object_columns_ or key not in image_columns_]
        if missing:
            raise TableError(f"{source}: image key column(s) {', '.join(missing)} must be in both the object and "
                             f"the image table")
        return tuple(given)
    keys = tuple(key for key in IMAGE_KEY_COLUMNS if key in object_columns_ and key in image_columns_)
    if "ImageNumber" not in keys:
        raise TableError(f"{source}: objects and images must both have an ImageNumber column")
    return keys


def image_columns(source: TableSource, columns: Sequence[str], image_keys: tuple[str, ...], match_by: str,
                  image_name: str) -> ImageColumns:
    site = tuple(find_column(columns, (f"Metadata_{field}",), ("Image",)) for field in SITE_FIELDS)
    file_name = find_column(columns, (f"FileName_{image_name}",), ("Image",))
    has_site = all(site)
    if match_by == "metadata" and not has_site:
        raise TableError(f"{source}: matching by metadata needs Metadata_Plate, Metadata_Well, Metadata_Site "
                         f"(missing {', '.join(f'Metadata_{f}' for f, c in zip(SITE_FIELDS, site) if not c)})")
    if match_by == "filename" and not file_name:
        raise TableError(f"{source}: matching by file name needs FileName_{image_name} (set --image-name)")
    if match_by == "auto" and not has_site and not file_name:
        raise TableError(f"{source}: no Metadata_Plate/Well/Site columns and no FileName_{image_name} column: "
                         f"cannot tell which site an image is")
    use_site = has_site and match_by != "filename"
    return ImageColumns(image_keys, site if use_site else None, None if use_site else file_name)


# ------------------------------------------------------------------ reading
def iter_table(source: TableSource, columns: Sequence[str], chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """The table's ``columns``, ``chunk_rows`` rows at a time."""
    path = as_storage_path(source.url)
    wanted = list(dict.fromkeys(columns))
    if source.format == "csv":
        with path.open("rb") as handle:
            reader = pd.read_csv(handle, usecols=wanted, chunksize=chunk_rows, dtype=str, keep_default_na=False,
                                 compression=_compression(path))
            yield from reader
    elif source.format == "parquet":
        with path.open("rb") as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=chunk_rows, columns=wanted):
                yield batch.to_pandas()
    else:
        with _sqlite(path) as connection:
            table = _sqlite_table(connection, source)
            cursor = connection.execute(f'SELECT {", ".join(_quoted(c) for c in wanted)} FROM {_quoted(table)}')
            while rows := cursor.fetchmany(chunk_rows):
                yield pd.DataFrame.from_records(rows, columns=wanted)


def key_text(value) -> str:
    """A metadata or key value as the index writes it: ``1``, not ``1.0``."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (bytes, bytearray)):
        return value.decode()
    return str(value).strip()


def image_ref(source_number: int, values: Sequence) -> str:
    """A key naming one image of one source: ``<source>:<TableNumber>:<ImageNumber>``."""
    return ":".join([str(source_number), *(key_text(v) for v in values)])


def objects_per_image(frame: pd.DataFrame, columns: ObjectColumns, source_number: int,
                      source: TableSource, first_row: int) -> Iterator[tuple]:
    """``(image ref, (object numbers, (N, 2) centres))`` per image of a chunk, and ``("bad", reason)`` rows."""
    xy = frame[[columns.x, columns.y]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    numbers = (pd.to_numeric(frame[columns.object_number], errors="coerce").to_numpy(np.float64)
               if columns.object_number else np.arange(first_row, first_row + len(frame), dtype=np.float64))
    bad = ~np.isfinite(xy).all(axis=1)
    for row in np.flatnonzero(bad)[:100]:
        yield "bad", (f"{source} row {first_row + row + 1}: nucleus centre {frame.iloc[row][columns.x]!r}, "
                      f"{frame.iloc[row][columns.y]!r} is not a number; the object is left out")
    if bad.sum() > 100:
        yield "bad", f"{source}: {int(bad.sum()) - 100} more object(s) without a numeric centre left out"
    good = np.flatnonzero(~bad)
    keys = frame[list(columns.image_keys)].iloc[good].map(key_text)
    for values, rows in keys.groupby(list(columns.image_keys), sort=False).indices.items():
        values = values if isinstance(values, tuple) else (values,)
        yield image_ref(source_number, values), (numbers[good[rows]], xy[good[rows]])


def image_match_keys(frame: pd.DataFrame, columns: ImageColumns, source_number: int) -> Iterator[tuple[str, str]]:
    """``(match key, image ref)`` per image row: the key is ``plate/well/site`` or ``file:<name>``."""
    refs = [image_ref(source_number, values) for values in frame[list(columns.image_keys)].itertuples(index=False)]
    if columns.site:
        plates, wells, sites = (frame[c].map(key_text) for c in columns.site)
        matches = [f"{p}/{w}/{s}" for p, w, s in zip(plates, wells, sites)]
    else:
        matches = ["file:" + os.path.basename(key_text(name).replace("\\", "/")) for name in frame[columns.file_name]]
    return zip(matches, refs)


def site_match_key(plate: str, well: str, site: str, channel_file: str, by_file_name: bool) -> str:
    """The index side of :func:`image_match_keys`."""
    if by_file_name:
        return "file:" + os.path.basename(channel_file.replace("\\", "/"))
    return f"{plate}/{well}/{site}"


# ------------------------------------------------------------------ helpers
def _quoted(name: str) -> str:
    """An SQL identifier (a 'single-quoted' name would be a string literal)."""
    return '"' + name.replace('"', '""') + '"'


def _compression(path: StoragePath) -> str | None:
    return "gzip" if path.name.lower().endswith(".gz") else None


class _sqlite:
    """A SQLite file opened read-only; one in a bucket is copied to a temporary file first (SQLite reads files)."""

    def __init__(self, path: StoragePath):
        self.path = path
        self.copy: str | None = None

    def __enter__(self) -> sqlite3.Connection:
        local = str(self.path)
        if not self.path.is_local:
            handle, self.copy = tempfile.mkstemp(suffix=".sqlite")
            with os.fdopen(handle, "wb") as out, self.path.open("rb") as source:
                while block := source.read(1 << 24):
                    out.write(block)
            local = self.copy
        try:
            self.connection = sqlite3.connect(f"file:{local}?mode=ro", uri=True)
            self.connection.execute("SELECT 1 FROM sqlite_master LIMIT 1")
        except sqlite3.DatabaseError as error:
            raise TableError(f"{self.path}: not a readable SQLite file ({error})") from error
        return self.connection

    def __exit__(self, *exc) -> None:
        self.connection.close()
        if self.copy:
            os.remove(self.copy)


def _sqlite_table(connection: sqlite3.Connection, source: TableSource) -> str:
    """``Per_Nuclei`` or ``Nuclei`` (CellProfiler's two naming schemes), as present."""
    tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type IN ('table','view')")]
    wanted = source.table or ""
    for candidate in (wanted, wanted.removeprefix("Per_")):
        if candidate in tables:
            return candidate
    raise TableError(f"{source.url}: no table {wanted} (has {', '.join(sorted(tables)) or 'none'})")
