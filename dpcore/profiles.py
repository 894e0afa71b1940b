"""Screen-level profiles: cells reduced per group, then normalized, feature-selected and summarised.

::

    <exp>/profiles/
        <level>.parquet                                  one row per group (default: well)
        <level>_normalized.parquet                       per plate, against the controls (or all wells)
        <level>_normalized_feature_select.parquet        pycytominer's feature selection
        treatments.parquet                               consensus (median) per treatment
        _manifest.json                                   written last: the commit of a run
        _parts/<level>/<plate>.parquet                   the reduction's output, one file per plate

The reduction from cells to groups is the only step that sees every cell; it is a Beam pipeline
(``beam_pipelines.aggregate``) whose arithmetic lives here: an exact median (or mean) of one group's
cells, and the ``Metadata_`` columns that are constant in the group. The steps after it work on the
small reduced table with pycytominer, the field's library, called per plate where its meaning is per
plate (normalization against a plate's own controls).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

METADATA_PREFIX = "Metadata_"
PARTS_DIR = "_parts"
MANIFEST_NAME = "_manifest.json"
CELL_COUNT = "Metadata_Object_Count"


def feature_columns(columns: Sequence[str]) -> list[str]:
    return [c for c in columns if not c.startswith(METADATA_PREFIX)]


def metadata_columns(columns: Sequence[str]) -> list[str]:
    return [c for c in columns if c.startswith(METADATA_PREFIX)]


@dataclass
class GroupPart:
    """Cells of one group from one site file: their features and the metadata values seen."""

    features: np.ndarray  # (cells, features) float32
    metadata: dict[str, set]  # column -> distinct values in these cells


def group_parts(frame: pd.DataFrame, strata: Sequence[str], features: Sequence[str]) -> list[tuple[tuple, GroupPart]]:
    """One site file's cells split by group key (a site lies in one well, but a custom level may split it)."""
    missing = [c for c in strata if c not in frame.columns]
    if missing:
        raise KeyError(f"aggregate.strata column(s) {', '.join(missing)} not in the features "
                       f"(they have {', '.join(metadata_columns(frame.columns)[:8])}, ...)")
    parts = []
    meta = [c for c in metadata_columns(frame.columns) if c not in strata]
    for key, rows in frame.groupby(list(strata), sort=False, dropna=False).indices.items():
        key = key if isinstance(key, tuple) else (key,)
        chunk = frame.iloc[rows]
        parts.append((tuple(str(k) for k in key), GroupPart(
            chunk[list(features)].to_numpy(np.float32),
            {c: set(chunk[c].astype(str).unique()) for c in meta})))
    return parts


def reduce_group(key: tuple, parts: Sequence[GroupPart], strata: Sequence[str], features: Sequence[str],
                 operation: str) -> dict:
    """One output row: the group's keys, its constant metadata, cell count and the median (or mean)."""
    stacked = np.concatenate([p.features for p in parts]).astype(np.float64)
    values = np.median(stacked, axis=0) if operation == "median" else stacked.mean(axis=0)
    row: dict = dict(zip(strata, key))
    seen: dict[str, set] = {}
    for part in parts:
        for column, distinct in part.metadata.items():
            seen.setdefault(column, set()).update(distinct)
    row.update({column: _native(next(iter(distinct))) for column, distinct in sorted(seen.items())
                if len(distinct) == 1})
    row[CELL_COUNT] = int(len(stacked))
    # Plain Python floats: Beam's coder writes them in 9 bytes each, where a numpy scalar is pickled one by one.
    row.update(zip(features, values.tolist()))
    return row


def _native(value):
    """A numpy scalar as the Python value it holds (other values as they are)."""
    return value.item() if isinstance(value, np.generic) else value


def rows_to_frame(rows: Sequence[dict], strata: Sequence[str], features: Sequence[str]) -> pd.DataFrame:
    """Rows of :func:`reduce_group` as a frame: metadata first (strata, then the rest sorted), then features."""
    frame = pd.DataFrame(list(rows))
    meta = list(strata) + sorted(c for c in frame.columns if c.startswith(METADATA_PREFIX) and c not in strata)
    # A column constant in some groups only is missing from the others: it is not a group property.
    meta = [c for c in meta if c in strata or c == CELL_COUNT or frame[c].notna().all()]
    return frame[meta + list(features)].sort_values(list(strata), kind="stable").reset_index(drop=True)


# ------------------------------------------------------------ small-table steps
def control_query(label_column: str | None, control_value: str | None) -> str:
    """pycytominer's ``samples`` for normalizing against controls ("all" when no control is configured)."""
    if not label_column or control_value is None:
        return "all"
    escaped = str(control_value).replace("\\", "\\\\").replace('"', '\\"')
    return f'`{label_column}` == "{escaped}"'


def normalize_per_plate(profiles: pd.DataFrame, method: str, samples: str,
                        plate_column: str = "Metadata_Plate") -> pd.DataFrame:
    """pycytominer.normalize on each plate's rows against that plate's ``samples``."""
    from pycytominer import normalize  # noqa: PLC0415 -- pycytominer loads scikit-learn: only here

    features = feature_columns(profiles.columns)
    meta = metadata_columns(profiles.columns)
    parts = []
    for plate, rows in profiles.groupby(plate_column, sort=True):
        if samples != "all" and rows.query(samples).empty:
            raise ValueError(f"plate {plate} has no control rows ({samples}): normalize against all wells "
                             f"(aggregate.normalize.samples \"all\") or add controls")
        parts.append(normalize(rows.reset_index(drop=True), features=features, meta_features=meta, samples=samples,
                               method=method, output_type=None))
    return pd.concat(parts, ignore_index=True)[meta + features]


def select_features(profiles: pd.DataFrame, operations: Sequence[str], settings: dict) -> pd.DataFrame:
    """pycytominer.feature_select over the whole (normalized) table."""
    from pycytominer import feature_select  # noqa: PLC0415

    features = feature_columns(profiles.columns)
    selected = feature_select(profiles, features=features, operation=list(operations), output_type=None,
                              **settings)
    return selected


def consensus_per_treatment(profiles: pd.DataFrame, by: Sequence[str], operation: str = "median") -> pd.DataFrame:
    """pycytominer.consensus: one row per treatment, the median of its replicates."""
    from pycytominer import consensus  # noqa: PLC0415

    features = feature_columns(profiles.columns)
    result = consensus(profiles[list(by) + features], replicate_columns=list(by), operation=operation,
                       features=features, output_type=None)
    # Annotations constant within a treatment (its mechanism, its compound ID) stay with it.
    others = [c for c in metadata_columns(profiles.columns) if c not in by and c != CELL_COUNT]
    grouped = profiles.groupby(list(by), sort=False)
    constant = [c for c in others if (grouped[c].nunique(dropna=False) <= 1).all()]
    if constant:
        result = result.merge(grouped[constant].first().reset_index(), on=list(by), how="left")
    return result[list(by) + constant + features]
