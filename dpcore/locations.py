"""Cell locations: ``inputs/locations/<plate>/<well>-<site>-Nuclei.csv``.

Each file lists nuclei centres in pixels (``Nuclei_Location_Center_X`` is the
column, ``..._Y`` the row), as CellProfiler writes them. A missing file means
"no cells for this site": callers count and report it rather than guessing.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pandas as pd

from dpcore.storage import StoragePath

logger = logging.getLogger(__name__)

X_COLUMN = "Nuclei_Location_Center_X"
Y_COLUMN = "Nuclei_Location_Center_Y"


class LocationsError(ValueError):
    """A locations file exists but cannot be used; the message says why."""


class LocationsMissing(LocationsError):
    """No locations file for a site."""


def read_locations(path: StoragePath) -> np.ndarray:
    """Return an ``(N, 2)`` float64 array of (x, y) centres, in file order."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise LocationsMissing(f"{path}: locations file not found") from error
    try:
        frame = pd.read_csv(io.BytesIO(data))
    except pd.errors.EmptyDataError:
        raise LocationsError(f"{path}: empty file (expected columns {X_COLUMN}, {Y_COLUMN})") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise LocationsError(f"{path}: not a readable CSV ({error})") from error
    missing = [c for c in (X_COLUMN, Y_COLUMN) if c not in frame.columns]
    if missing:
        raise LocationsError(f"{path}: missing column(s) {', '.join(missing)}; has {', '.join(map(str, frame.columns))}")
    centres = frame[[X_COLUMN, Y_COLUMN]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(centres).all(axis=1))
    if bad.size:
        lines = ", ".join(str(i + 2) for i in bad[:10])
        raise LocationsError(f"{path}: non-numeric or missing centre on line(s) {lines}")
    return centres.reshape(-1, 2)
