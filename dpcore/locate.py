"""``locate``: what a run writes, how a plate's locations are committed, and which plates to (re)do.

Locations are DeepProfiler's inputs, ``inputs/locations/<plate>/<well>-<site>-Nuclei.csv``, and people
also write them by hand or with their own scripts, so locate must never replace them silently. A
plate's folder holds ``_locate.json`` once locate has started on it: the settings (segmentation
parameters or the CellProfiler source), and ``complete`` when every site was written. So:

- no marker and no locations file: the plate is done afresh;
- no marker but locations files: someone else's locations; refused unless ``--overwrite``;
- a marker with other settings: refused unless ``--overwrite`` (two methods in one screen);
- a marker with these settings, not complete: resumed (each CSV is renamed into place when whole,
  so a file under its final name is a committed site);
- complete: kept.

QC outputs (counts per site and a picture of a few sites per plate) go to ``outputs/locate/<plate>/``.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from dpcore.config import Config, LocateConfig
from dpcore.layout import LOCATIONS_SUFFIX, ProjectLayout
from dpcore.locations import X_COLUMN, Y_COLUMN
from dpcore.segmentation import Nuclei, NucleusFinder, find_nuclei
from dpcore.storage import StoragePath

logger = logging.getLogger(__name__)

MARKER_NAME = "_locate.json"
DNA_NAMES = ("dna", "hoechst", "dapi", "nuclei", "origdna")


class LocateRefused(ValueError):
    """Plates whose existing locations a run would replace; the message lists them and the way out."""


def nucleus_channel(config: Config) -> str:
    """``locate.channel``, else the channel named DNA (Hoechst, DAPI), else the first channel."""
    if config.locate.channel:
        return config.locate.channel
    for channel in config.channels:
        if channel.lower() in DNA_NAMES:
            return channel
    return config.channels[0]


def nucleus_finder(locate: LocateConfig) -> NucleusFinder:
    """The config's settings in pixels."""
    scale = locate.pixels_per_unit
    return NucleusFinder(
        min_diameter=locate.min_diameter * scale, max_diameter=locate.max_diameter * scale,
        threshold=locate.threshold, threshold_correction=locate.threshold_correction,
        smoothing_sigma=None if locate.smoothing_sigma is None else locate.smoothing_sigma * scale,
        split_touching=locate.split_touching, declump_ratio=locate.declump_ratio,
        exclude_border=locate.exclude_border)


def corrected(image: np.ndarray, function: np.ndarray | None) -> np.ndarray:
    """The image divided by the plate's illumination function (as prepare corrects), or as it is."""
    if function is None:
        return image.astype(np.float32)
    if function.shape != image.shape:
        raise ValueError(f"illumination function {function.shape} does not fit the image {image.shape}")
    return image.astype(np.float32) / function.astype(np.float32)


def segment(image: np.ndarray, function: np.ndarray | None, finder: NucleusFinder) -> Nuclei:
    return find_nuclei(corrected(image, function), finder)


def locations_csv(centres: np.ndarray) -> str:
    """DeepProfiler's locations file: a header and one ``x,y`` line per nucleus (3 decimals)."""
    lines = [f"{X_COLUMN},{Y_COLUMN}"] + [f"{x:.3f},{y:.3f}" for x, y in np.asarray(centres).reshape(-1, 2)]
    return "\n".join(lines) + "\n"


def counts_csv(rows: Sequence[tuple[str, str, str, int]]) -> str:
    """``outputs/locate/<plate>/<plate>_counts.csv``: nuclei per site."""
    buffer = io.StringIO()
    buffer.write("Metadata_Plate,Metadata_Well,Metadata_Site,Nuclei_Count\n")
    for plate, well, site, count in sorted(rows, key=lambda r: (r[1], _natural(r[2]))):
        buffer.write(f"{plate},{well},{site},{count}\n")
    return buffer.getvalue()


def qc_choice(site_keys: Sequence[str], wanted: int) -> list[str]:
    """``wanted`` sites spread evenly over the plate's sorted site keys (the same on every run)."""
    ordered = sorted(site_keys)
    if wanted <= 0 or not ordered:
        return []
    if len(ordered) <= wanted:
        return ordered
    return [ordered[int(i)] for i in np.linspace(0, len(ordered) - 1, wanted).round()]


def _natural(text: str) -> tuple:
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


# ------------------------------------------------------------------ plates
@dataclass(frozen=True)
class PlatePlan:
    todo: list[str]  # plates the run writes
    fresh: list[str]  # of those, plates whose earlier files the run removes first (--overwrite)
    complete: list[str]  # kept as they are


def marker_file(layout: ProjectLayout, plate: str) -> StoragePath:
    return layout.locations_dir / plate / MARKER_NAME


def qc_dir(layout: ProjectLayout, plate: str) -> StoragePath:
    return layout.outputs / "locate" / plate


def marker_text(settings: dict, complete: bool, **counts: int) -> str:
    return json.dumps({"settings": settings, "complete": complete, **counts}, indent=2, sort_keys=True) + "\n"


def plan_plates(layout: ProjectLayout, plates: Sequence[str], settings: dict, overwrite: bool) -> PlatePlan:
    """Which plates to write, which to clear first and which are complete; LocateRefused for the rest."""
    todo, fresh, complete, refused = [], [], [], []
    for plate in plates:
        marker = marker_file(layout, plate)
        if overwrite:
            todo.append(plate)
            fresh.append(plate)
            continue
        if marker.exists():
            recorded = json.loads(marker.read_text())
            if recorded.get("settings") != settings:
                refused.append(f"plate {plate}: located with other settings ({marker}: "
                               f"{_differences(recorded.get('settings') or {}, settings)})")
            elif recorded.get("complete"):
                complete.append(plate)
            else:
                todo.append(plate)  # resumed: its committed CSVs are kept
            continue
        existing = [path for path in (layout.locations_dir / plate).glob(f"*{LOCATIONS_SUFFIX}")]
        if existing:
            refused.append(f"plate {plate}: {len(existing)} locations file(s) not written by locate "
                           f"(e.g. {existing[0]})")
            continue
        todo.append(plate)
    if refused:
        raise LocateRefused("locate would replace existing locations; --overwrite replaces them:\n  "
                            + "\n  ".join(refused[:10])
                            + (f"\n  ... and {len(refused) - 10} more plate(s)" if len(refused) > 10 else ""))
    return PlatePlan(todo, fresh, complete)


def _differences(recorded: dict, current: dict) -> str:
    keys = sorted(set(recorded) | set(current))
    return ", ".join(f"{key} {recorded.get(key)!r} -> {current.get(key)!r}" for key in keys
                     if recorded.get(key) != current.get(key)) or "none"


def segmentation_settings(config: Config) -> dict:
    """What a segmented plate's locations depend on (recorded in its marker)."""
    return {**asdict(config.locate), "method": "segment", "channel": nucleus_channel(config)}
