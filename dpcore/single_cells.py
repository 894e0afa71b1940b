"""From a site to its single-cell crops: the logic export-sc and profile share.

A :class:`CellSource` holds the config fields that decide which image is read
(compressed PNGs or originals), where the cells are (locations files, or
DeepProfiler's full-image grid) and how they are cut.
"""

from __future__ import annotations

import logging
import threading
import zlib
from dataclasses import dataclass

import numpy as np

from dpcore.compression import output_shape
from dpcore.config import Config, ConfigError
from dpcore.crops import CropBatch, cell_boxes, cut_crops, full_image_centres, object_ids
from dpcore.images import ImageReadError, read_image
from dpcore.layout import ProjectLayout, resolve_inside
from dpcore.locations import LocationsError, read_locations
from dpcore.metadata import Site, check_columns, read_index
from dpcore.sites import compressed_image_paths, in_a_bucket, raw_image_paths, read_stack
from dpcore.storage import StoragePath

logger = logging.getLogger(__name__)

OUTLINES_INDEX = "outlines.csv"


@dataclass(frozen=True)
class SiteData:
    """What cutting a site reads: cell centres, the (H, W, C) image stack, the outline labels if masked."""

    site: Site
    centres: np.ndarray
    image: np.ndarray
    labels: np.ndarray | None


@dataclass(frozen=True)
class SiteCells:
    site: Site
    centres: np.ndarray      # (M, 2) x, y of every location, original pixels
    batch: CropBatch         # crops of the usable ones; batch.kept indexes centres


@dataclass(frozen=True)
class CellSource:
    layout: ProjectLayout
    channels: tuple[str, ...]
    width: int
    height: int
    box_size: int
    view_size: int
    mode: str
    use_compressed: bool
    scaling_factor: float

    # (plate, well, site) -> outline image path relative to inputs/outlines; empty unless mask_objects.
    outlines: tuple[tuple[tuple[str, str, str], str], ...] = ()

    @classmethod
    def from_config(cls, layout: ProjectLayout, config: Config) -> "CellSource":
        locations = config.dataset.locations
        outlines = read_outlines_index(layout, config.source) if locations.mask_objects else {}
        return cls(layout=layout, channels=config.channels, width=config.dataset.images.width,
                   height=config.dataset.images.height, box_size=locations.box_size,
                   view_size=locations.effective_view_size, mode=locations.mode,
                   use_compressed=config.prepare.compression.implement,
                   scaling_factor=config.prepare.compression.scaling_factor,
                   outlines=tuple(sorted(outlines.items())))

    def outline_labels(self, site: Site) -> np.ndarray:
        """The site's object label image at the size of the images read (nearest neighbour)."""
        relative = dict(self.outlines).get((site.plate, site.well, site.site))
        if relative is None:
            raise LocationsError(f"site {site.key}: no row in {self.layout.metadata_dir / OUTLINES_INDEX} "
                                 f"(mask_objects needs an outline image for every site)")
        labels = read_image(resolve_inside(self.layout.outlines_dir, relative, self.layout.root),
                            (self.height, self.width))
        height, width = self.image_shape
        if (height, width) != labels.shape:
            rows = np.minimum((np.arange(height) + 0.5) * labels.shape[0] / height, labels.shape[0] - 1)
            cols = np.minimum((np.arange(width) + 0.5) * labels.shape[1] / width, labels.shape[1] - 1)
            labels = labels[rows.astype(int)[:, None], cols.astype(int)[None, :]]
        return labels

    @property
    def image_shape(self) -> tuple[int, int]:
        """(height, width) of the images read: compressed PNGs may be rescaled."""
        if self.use_compressed:
            return output_shape((self.height, self.width), self.scaling_factor)
        return self.height, self.width

    def read_image(self, site: Site) -> np.ndarray:
        try:
            return read_stack(self.image_paths(site), self.image_shape)
        except ImageReadError as error:
            if not self.use_compressed or not isinstance(error.__cause__, FileNotFoundError):
                raise
            # prepare removes a failed site's PNGs, so a missing one is usually a failure upstream.
            raise ImageReadError(f"{error} (prepare has not written this site's compressed PNGs: it was not "
                                 f"run, or it failed for this site; see {self.layout.prepare_failures_file})"
                                 ) from error

    def centres(self, site: Site) -> np.ndarray:
        """Cell centres in original pixels; raises LocationsError/LocationsMissing."""
        if self.mode == "full_image":
            return full_image_centres(self.height, self.width, self.view_size)
        return read_locations(self.layout.locations_file(site.plate, site.well, site.site))

    def image_paths(self, site: Site) -> list[StoragePath]:
        """The files :meth:`read_image` reads."""
        if self.use_compressed:
            return compressed_image_paths(self.layout, site)
        return raw_image_paths(self.layout, site)

    def in_a_bucket(self, site: Site) -> bool:
        """Whether the site's images lie in an object store (worth reading ahead while others are cut)."""
        return in_a_bucket(lambda: self.image_paths(site))

    def load(self, site: Site, centres: np.ndarray | None = None) -> SiteData:
        """Everything cutting the site reads (the I/O of :meth:`cut`; no computation, any thread)."""
        centres = self.centres(site) if centres is None else centres
        image = self.read_image(site)
        return SiteData(site, centres, image, self.outline_labels(site) if self.outlines else None)

    def cut(self, site: Site, centres: np.ndarray | None = None) -> SiteCells:
        return self.cut_loaded(self.load(site, centres))

    def cut_loaded(self, data: SiteData, as_bytes: bool = False) -> SiteCells:
        """The site's crops, float32 in [0, 1] (what a model reads), or ``as_bytes`` uint8 (what is stored)."""
        centres, image, labels = data.centres, data.image, data.labels
        # Full-image tiles cover view_size pixels and are resized to box_size, as in DeepProfiler.
        extent = self.view_size if self.mode == "full_image" else self.box_size
        boxes = cell_boxes(centres, extent * self.image_shape[0] / self.height, self.image_shape,
                           (self.height, self.width))
        ids = None
        if labels is not None:
            scaled = np.asarray(centres, dtype=np.float64) * [self.image_shape[1] / self.width,
                                                               self.image_shape[0] / self.height]
            ids = object_ids(labels, scaled)
        batch = cut_crops(image, boxes, self.box_size, labels, ids, as_bytes=as_bytes)
        return SiteCells(site=data.site, centres=centres, batch=batch)


_warming: list[threading.Thread] = []


def warm_up_cutting(compressed: bool) -> None:
    """Import numba and load the crop kernel (``dpcore.crop_kernel``) for the images cells are cut from in a
    daemon thread, once per process: prepare's ``compressed`` PNGs are 8-bit, original microscopy images
    mostly 16-bit (another type loads on first use). ~0.6 s of import and ~0.3 s of loading numba's disk
    cache (~2 s more to compile it on the first run after an install).

    Commands call it before their own set-up (reading the index; in profile, importing TensorFlow and
    building the model) and workers when their cutting step starts, so the kernel is ready when the first
    site is cut and nothing waits for numba's import on the main thread. The thread shares the GIL with that
    set-up, which it slows by less than it saves. A failure here only means the first cut loads (or
    compiles) it, and reports the error then.
    """
    if _warming:
        return

    def load() -> None:
        try:
            from dpcore.crop_kernel import load_kernel  # noqa: PLC0415 -- numba loads where cells are cut

            load_kernel(np.uint8 if compressed else np.uint16)
        except Exception as error:  # noqa: BLE001 -- the first real cut raises it where it matters
            logger.debug("warming up the crop kernel failed (the first cut loads it): %s", error)

    thread = threading.Thread(target=load, name="dpbeam-crop-kernel-warm-up", daemon=True)
    _warming.append(thread)
    thread.start()


def read_outlines_index(layout: ProjectLayout, source: str) -> dict[tuple[str, str, str], str]:
    """DeepProfiler's ``inputs/metadata/outlines.csv``: plate, well, site -> ``Outlines`` image path."""
    path = layout.metadata_dir / OUTLINES_INDEX
    if not path.exists():
        raise ConfigError(source, [f"dataset.locations.mask_objects is true but {path} does not exist: it must "
                                   f"list Metadata_Plate, Metadata_Well, Metadata_Site and Outlines (an object "
                                   f"label image per site, relative to {layout.outlines_dir})"])
    frame = read_index(path)
    check_columns(frame, ("Metadata_Plate", "Metadata_Well", "Metadata_Site", "Outlines"), str(path))
    return {(r["Metadata_Plate"].strip(), r["Metadata_Well"].strip(), r["Metadata_Site"].strip()): r["Outlines"].strip()
            for _, r in frame.iterrows()}


def stable_fraction(key: str) -> float:
    """A deterministic pseudo-random number in [0, 1) for a key (same on every worker and run)."""
    return zlib.crc32(key.encode("utf-8")) / 2**32
